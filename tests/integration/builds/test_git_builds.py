"""Git sources built into images through podman's Docker Engine API, pushed to a real registry
(docker-registry with htpasswd auth), deployed, and called through the gateway.

Repositories are served over smart HTTP on loopback by `git http-backend`.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import docker
import pytest

from core.tenancy import image_repository
from runtimes.base import LABEL_DEPLOYMENT, LABEL_SERVER
from tests.support.cli import Cli
from tests.support.components import ECHO_IMAGE, Podman, labelled_containers
from tests.support.git_server import GitHttpServer
from tests.support.mcp_client import call_tool
from tests.support.registry import FaultProxy, Registry
from tests.support.stack import Stack, WorkerProcess, deploy, make_settings, wait_deployment

# Builds, pushes and two-deploy scenarios take longer than the suite's default per-test limit.
pytestmark = pytest.mark.timeout(900)

SERVER_PY = '''"""A weather MCP server, served over streamable HTTP on $PORT."""
import os

from mcp.server.mcpserver import MCPServer

app = MCPServer("weather")


@app.tool()
def forecast(city: str) -> str:
    """Tomorrow's forecast."""
    return f"sunny in {city}"


def main() -> None:
    app.run("streamable-http", host="0.0.0.0", port=int(os.environ["PORT"]))
'''

PYPROJECT = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "weather-mcp"
version = "0.1.0"
dependencies = ["mcp>=2.3,<3"]

[project.scripts]
weather-mcp = "weather:main"

[tool.setuptools]
py-modules = ["weather"]
"""


def python_repo(extra: str = "") -> dict[str, str | bytes]:
    return {"pyproject.toml": PYPROJECT, "weather.py": SERVER_PY + extra}


@pytest.fixture
def build_settings(
    database_url: str, temporal_address: str, process_state_dir: Path, docker_engine: Podman, base_image: str
) -> dict[str, Any]:
    docker_engine.ensure_echo_image()
    return {
        "database_url": database_url,
        "temporal_address": temporal_address,
        "state_dir": process_state_dir,
        "docker_host": docker_engine.url,
        "git_allow_insecure_urls": True,
        "build_python_image": base_image,
        "registry_push_backoff_seconds": 0.1,
    }


@contextlib.asynccontextmanager
async def platform(base: dict[str, Any], **overrides: Any) -> AsyncIterator[Stack]:
    values = {**base, **overrides}
    settings = make_settings(
        values.pop("database_url"), values.pop("temporal_address"), values.pop("state_dir"), **values
    )
    stack = Stack(settings)
    await stack.start()
    try:
        yield stack
    finally:
        await stack.stop()


def registry_settings(registry: Registry, workdir: Path, endpoint: str | None = None) -> dict[str, Any]:
    endpoint = endpoint or registry.endpoint
    auth = registry.write_dockerconfig(workdir / f"auth-{uuid.uuid4().hex[:6]}.json", endpoint)
    return {
        "registry": f"{endpoint}/mcp",
        "registry_insecure": True,
        "registry_auth_dockerconfig": auth,
    }


async def create_git_server(client: Any, url: str, **source: Any) -> dict[str, Any]:
    response = await client.post(
        "/api/servers",
        json={"name": f"git-{uuid.uuid4().hex[:6]}", "source": {"type": "git", "repo_url": url, **source}},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def events(client: Any, server_id: str, deployment_id: str | None = None) -> list[dict[str, Any]]:
    params = {"deployment_id": deployment_id} if deployment_id else {}
    response = await client.get(f"/api/servers/{server_id}/metrics", params=params)
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def why(deployment: dict[str, Any]) -> str:
    steps = "; ".join(f"{s['step']}={s['status']}: {s.get('message') or ''}" for s in deployment.get("steps", []))
    return f"{deployment['status']}: {deployment.get('error')} [{steps}]"


def named(items: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [item["details"] for item in items if item["event"] == name]


def leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("mcphost-build-*")}


async def no_new_leftovers(before: set[str], bound: float = 30.0) -> None:
    """A build attempt cancelled late (a slow heartbeat) removes its workspace once its thread ends."""
    deadline = time.monotonic() + bound
    while not leftovers() <= before:
        if time.monotonic() > deadline:
            raise AssertionError(f"build workspaces left behind: {sorted(leftovers() - before)}")
        await asyncio.sleep(0.1)


async def test_python_repo_is_built_pushed_deployed_and_reused(
    build_settings: dict[str, Any],
    git_server: GitHttpServer,
    registry: Registry,
    docker_engine: Podman,
    workdir: Path,
) -> None:
    name = f"weather-{uuid.uuid4().hex[:6]}"
    revision = git_server.publish(name, python_repo())
    before = leftovers()
    async with platform(build_settings, **registry_settings(registry, workdir)) as stack:
        client, _ = await stack.user()
        async with client:
            server = await create_git_server(client, git_server.url(name))
            sid, slug = server["id"], server["slug"]
            first = await deploy(client, sid, timeout=600)
            assert first["status"] == "running", why(first)
            steps = [s["step"] for s in first["steps"]]
            assert steps[:3] == ["resolve", "build", "push"] and "health_check" in steps
            assert first["revision"] == revision
            repo = f"mcp/{image_repository(sid)}"
            assert first["image_ref"] == f"{registry.endpoint}/{repo}@{first['image_digest']}"

            answer = await call_tool(f"{stack.base_url}/mcp/{slug}", server["api_key"], "forecast", {"city": "Oslo"})
            assert answer == "sunny in Oslo"

            # The registry holds one OCI index for the revision, pointing at the platform manifest.
            assert sorted(registry.tags(repo)) == [revision[:12], f"{revision[:12]}-linux-amd64"]
            status, index, digest = registry.manifest(repo, revision[:12])
            assert status == 200 and index is not None and digest == first["image_digest"]
            assert index["mediaType"] == "application/vnd.oci.image.index.v1+json"
            assert [m["platform"]["architecture"] for m in index["manifests"]] == ["amd64"]

            artifacts = (await client.get(f"/api/servers/{sid}/artifacts")).json()["data"]
            assert len(artifacts) == 1
            artifact = artifacts[0]
            assert artifact["status"] == "pushed" and artifact["source_revision"] == revision
            assert artifact["manifest_digest"] == first["image_digest"]
            assert artifact["recipe"]["kind"] == "python" and artifact["recipe"]["port"] == 8000
            assert artifact["credential_outcomes"]["health"] == "fresh"
            [plat] = artifact["platforms"]
            assert plat["platform"] == "linux/amd64" and plat["manifest_digest"] == index["manifests"][0]["digest"]

            seen = await events(client, sid, first["id"])
            names = [e["event"] for e in seen]
            for expected in ("auth_health_reported", "tag_started", "tag_succeeded", "push_started",
                             "push_succeeded", "manifest_published", "manifest_prune_started"):  # fmt: skip
                assert expected in names, names
            assert "push_retry" not in names
            pushed = named(seen, "push_succeeded")[0]
            assert pushed["attempt"] == 1 and pushed["retry_limit"] == 3 and pushed["platform"] == "linux/amd64"
            assert pushed["registry_endpoint"] == registry.endpoint
            assert named(seen, "manifest_published")[0]["digests"] == {"linux/amd64": plat["manifest_digest"]}

            # The image carries the MCP server name, source repository and revision.
            engine = docker.DockerClient(base_url=docker_engine.url)
            try:
                labels = engine.images.get(plat["image_id"]).labels
            finally:
                engine.close()
            assert labels["io.modelcontextprotocol.server.name"] == slug
            assert labels["org.opencontainers.image.source"] == git_server.url(name)
            assert labels["org.opencontainers.image.revision"] == revision

            # The build output went to the server's logs.
            logs = (await client.get(f"/api/servers/{sid}/logs")).json()["data"]
            assert any(line["message"].startswith("build: ") for line in logs)

            only = (
                await client.get(f"/api/servers/{sid}/metrics", params={"event": "push_succeeded,tag_started"})
            ).json()
            assert sorted(e["event"] for e in only["data"]) == ["push_succeeded", "tag_started"]
            # Another user sees neither the artifacts nor the events.
            other, _ = await stack.user()
            async with other:
                for path in ("artifacts", "metrics"):
                    assert (await other.get(f"/api/servers/{sid}/{path}")).status_code == 404

            # Same revision again: the artifact is reused, nothing is built or pushed.
            second = await deploy(client, sid, timeout=300)
            assert second["status"] == "running" and second["image_ref"] == first["image_ref"]
            again = [e["event"] for e in await events(client, sid, second["id"])]
            assert "build_reused" in again and "build_started" not in again and "push_started" not in again
            assert len((await client.get(f"/api/servers/{sid}/artifacts")).json()["data"]) == 1
    await no_new_leftovers(before)


async def test_repository_dockerfile_and_expose_are_honoured_without_a_registry(
    build_settings: dict[str, Any], git_server: GitHttpServer, tmp_path: Path
) -> None:
    name = f"exposed-{uuid.uuid4().hex[:6]}"
    dockerfile = f"FROM {ECHO_IMAGE}\nARG SERVE_PORT=9123\nEXPOSE ${{SERVE_PORT}}\nLABEL purpose=test\n"
    revision = git_server.publish(name, {"Dockerfile": dockerfile, "README.md": "echo"})
    async with platform(build_settings) as stack:
        client, _ = await stack.user()
        async with client:
            # Through the CLI, as a user would: create from git, deploy, list the artifacts and events.
            cli = await Cli.for_user(client, stack.base_url, tmp_path)
            created = await cli("servers", "create", name, "--git", git_server.url(name), "--branch", "main")
            assert created.code == 0, created.err
            deployed = await cli("deploy", name)
            assert deployed.code == 0, deployed.out + deployed.err
            assert "build" in deployed.out and "running" in deployed.out
            shown = await cli("artifacts", name)
            assert shown.code == 0 and revision[:12] in shown.out and "built" in shown.out
            events_out = await cli("events", name, "--event", "build_succeeded")
            assert (
                events_out.code == 0 and "build_succeeded" in events_out.out and "build_started" not in events_out.out
            )

            server = next(s for s in (await client.get("/api/servers")).json()["data"] if s["name"] == name)
            key = (await client.post(f"/api/servers/{server['id']}/api-key")).json()["api_key"]
            result = (await client.get(f"/api/servers/{server['id']}/deployments")).json()["data"][0]
            result = (await client.get(f"/api/deployments/{result['id']}")).json()
            assert result["status"] == "running", why(result)
            assert "push" not in [s["step"] for s in result["steps"]]
            assert result["image_ref"].startswith(f"localhost/{image_repository(server['id'])}:")
            artifact = (await client.get(f"/api/servers/{server['id']}/artifacts")).json()["data"][0]
            assert artifact["status"] == "built" and artifact["recipe"]["kind"] == "dockerfile"
            assert artifact["recipe"]["exposed"] == [9123] and artifact["recipe"]["port"] == 9123
            gateway = f"{stack.base_url}/mcp/{server['slug']}"
            assert await call_tool(gateway, key, "echo", {"text": "hi"}) == "echo: hi"


async def build_lines(client: Any, server_id: str, deployment_id: str) -> list[str]:
    logs = (await client.get(f"/api/servers/{server_id}/logs", params={"tail": 2000})).json()["data"]
    return [
        line["message"]
        for line in logs
        if line["deployment_id"] == deployment_id and line["message"].startswith("build: ")
    ]


async def test_build_cache_is_used_unless_disabled(build_settings: dict[str, Any], git_server: GitHttpServer) -> None:
    name = f"cached-{uuid.uuid4().hex[:6]}"
    git_server.publish(name, {"Dockerfile": f"FROM {ECHO_IMAGE}\nRUN echo {uuid.uuid4().hex} > /marker\nEXPOSE 8080\n"})
    async with platform(build_settings) as stack:
        client, _ = await stack.user()
        async with client:
            server = await create_git_server(client, git_server.url(name))
            first = await deploy(client, server["id"], timeout=300)
            assert first["status"] == "running", why(first)
            assert not any("Using cache" in line for line in await build_lines(client, server["id"], first["id"]))
            git_server.publish(name, {"README.md": "new revision, same Dockerfile"})
            second = await deploy(client, server["id"], timeout=300)
            assert second["status"] == "running", why(second)
            assert any("Using cache" in line for line in await build_lines(client, server["id"], second["id"]))
    async with platform(build_settings, registry_build_disable_cache=True) as stack:
        client, _ = await stack.user()
        async with client:
            git_server.publish(name, {"README.md": "third revision"})
            server = await create_git_server(client, git_server.url(name))
            third = await deploy(client, server["id"], timeout=300)
            assert third["status"] == "running", why(third)
            lines = await build_lines(client, server["id"], third["id"])
            assert any("RUN echo" in line for line in lines)
            assert not any("Using cache" in line for line in lines)


async def test_transient_registry_faults_are_retried_then_fail_cleanly(
    build_settings: dict[str, Any],
    git_server: GitHttpServer,
    registry: Registry,
    fault_proxy: FaultProxy,
    workdir: Path,
) -> None:
    name = f"flaky-{uuid.uuid4().hex[:6]}"
    git_server.publish(name, {"Dockerfile": f"FROM {ECHO_IMAGE}\nEXPOSE 8080\n"})
    settings = registry_settings(registry, workdir, endpoint=fault_proxy.endpoint)
    try:
        async with platform(build_settings, **settings, registry_push_timeout_seconds=2) as stack:
            client, _ = await stack.user()
            async with client:
                # Two connections reset: two retries, then the third attempt goes through.
                fault_proxy.arm(drop=2)
                server = await create_git_server(client, git_server.url(name))
                result = await deploy(client, server["id"], timeout=300)
                assert result["status"] == "running", why(result)
                seen = await events(client, server["id"], result["id"])
                retries = named(seen, "push_retry")
                assert [r["attempt"] for r in retries] == [1, 2]
                # A reset lands during the request or, racing the handshake, during connect.
                assert {r["error_kind"] for r in retries} <= {"connection_reset", "connect_error"}
                assert all(r["retry_limit"] == 3 for r in retries)
                assert named(seen, "push_succeeded")[0]["attempt"] == 3
                assert fault_proxy.dropped == 2

                # A connection held past the push timeout counts as a timeout, and is retried too.
                git_server.publish(name, {"README.md": "second revision"})
                fault_proxy.arm(delay=4.0, delay_count=1)
                slow = await deploy(client, server["id"], timeout=300)
                assert slow["status"] == "running", why(slow)
                kinds = [r["error_kind"] for r in named(await events(client, server["id"], slow["id"]), "push_retry")]
                assert kinds == ["timeout"]

        # More failures than the limit: the deployment fails with an actionable message, nothing serves it.
        async with platform(build_settings, **settings, registry_push_retries=1) as stack:
            client, _ = await stack.user()
            async with client:
                fault_proxy.arm(drop=50)
                server = await create_git_server(client, git_server.url(name))
                failed = await deploy(client, server["id"], timeout=300)
                assert failed["status"] == "failed", failed
                assert "failed after 2 attempts" in failed["error"] and "REGISTRY_PUSH_RETRIES" in failed["error"]
                assert [s["status"] for s in failed["steps"] if s["step"] == "push"] == ["failed"]
                seen = await events(client, server["id"], failed["id"])
                assert [r["attempt"] for r in named(seen, "push_retry")] == [1]
                [final] = named(seen, "push_failed")
                assert final["attempt"] == 2 and final["error_kind"] in ("connection_reset", "connect_error")
                artifact = (await client.get(f"/api/servers/{server['id']}/artifacts")).json()["data"][0]
                assert artifact["status"] == "failed" and artifact["manifest_digest"] is None
    finally:
        fault_proxy.arm()


async def test_rotated_credentials_are_refreshed_and_wrong_ones_fail_with_advice(
    build_settings: dict[str, Any],
    git_server: GitHttpServer,
    registry: Registry,
    workdir: Path,
) -> None:
    name = f"creds-{uuid.uuid4().hex[:6]}"
    git_server.publish(name, {"Dockerfile": f"FROM {ECHO_IMAGE}\nEXPOSE 8080\n"})
    settings = registry_settings(registry, workdir)
    auth_file: Path = settings["registry_auth_dockerconfig"]
    original = registry.password
    try:
        async with platform(build_settings, **settings) as stack:
            client, _ = await stack.user()
            async with client:
                server = await create_git_server(client, git_server.url(name))
                assert (await deploy(client, server["id"], timeout=300))["status"] == "running"

                # The password is rotated at the registry and the new one written to disk mid-run: the
                # worker's cached credentials get a 401, it re-reads the file, and the push goes through.
                registry.set_password(f"rotated-{uuid.uuid4().hex[:6]}")
                registry.write_dockerconfig(auth_file, registry.endpoint)
                git_server.publish(name, {"README.md": "v2"})
                second = await deploy(client, server["id"], timeout=300)
                assert second["status"] == "running", why(second)
                seen = await events(client, server["id"], second["id"])
                names = [e["event"] for e in seen]
                assert names.index("auth_refresh_started") < names.index("auth_refresh_succeeded")
                assert "auth_refresh_failed" not in names
                assert [p.get("reason") for p in named(seen, "push_started")] == [None, "auth_refresh"]

                # Now the file holds a password the registry no longer accepts.
                registry.set_password(f"other-{uuid.uuid4().hex[:6]}")
                git_server.publish(name, {"README.md": "v3"})
                third = await deploy(client, server["id"], timeout=300)
                assert third["status"] == "failed", third
                assert "Rotate the registry credentials" in third["error"]
                seen = await events(client, server["id"], third["id"])
                assert named(seen, "auth_refresh_failed") and named(seen, "push_failed")[0]["auth_expired"] is True
                # The earlier revision keeps serving.
                gateway = f"{stack.base_url}/mcp/{server['slug']}"
                assert await call_tool(gateway, server["api_key"], "echo", {"text": "still"}) == "echo: still"
    finally:
        registry.set_password(original)


async def test_old_credentials_file_is_reported_and_rotation_skipped_without_refresher(
    build_settings: dict[str, Any], git_server: GitHttpServer, registry: Registry, workdir: Path
) -> None:
    name = f"aged-{uuid.uuid4().hex[:6]}"
    git_server.publish(name, {"Dockerfile": f"FROM {ECHO_IMAGE}\nEXPOSE 8080\n"})
    settings = registry_settings(registry, workdir)
    refresher = workdir / f"refresh-{uuid.uuid4().hex[:6]}.sh"
    marker = workdir / f"refreshed-{uuid.uuid4().hex[:6]}"
    refresher.write_text(f"#!/bin/sh\ntouch {settings['registry_auth_dockerconfig']} && touch {marker}\n")
    refresher.chmod(0o755)
    # Age 0 already counts as "rotate soon" when the lead equals the maximum age.
    aged = {"registry_auth_max_age_seconds": 100, "registry_auth_rotate_lead_seconds": 100}
    async with platform(build_settings, **settings, **aged) as stack:
        client, _ = await stack.user()
        async with client:
            server = await create_git_server(client, git_server.url(name))
            result = await deploy(client, server["id"], timeout=300)
            assert result["status"] == "running", why(result)
            seen = await events(client, server["id"], result["id"])
            [health] = named(seen, "auth_health_reported")
            assert health["verdict"] == "rotate_soon" and health["auth_expired"] is False
            assert named(seen, "auth_rotation_skipped")[0]["reason"] == "no REGISTRY_AUTH_REFRESHER configured"
    async with platform(build_settings, **settings, **aged, registry_auth_refresher=str(refresher)) as stack:
        client, _ = await stack.user()
        async with client:
            server = await create_git_server(client, git_server.url(name))
            result = await deploy(client, server["id"], timeout=300)
            assert result["status"] == "running", why(result)
            names = [e["event"] for e in await events(client, server["id"], result["id"])]
            assert names.index("auth_rotation_started") < names.index("auth_rotation_succeeded")
            assert marker.exists()


async def test_hostile_and_broken_repositories_fail_clearly_and_leave_nothing(
    build_settings: dict[str, Any], git_server: GitHttpServer, stack: Stack
) -> None:
    # On a default installation (no insecure URLs), create refuses these with a 4xx saying why.
    client, _ = await stack.user()
    async with client:
        for url, status, words in [
            ("http://example.com/x.git", 422, "GIT_ALLOW_INSECURE_URLS"),
            ("file:///etc", 422, "disabled"),
            ("https://169.254.169.254/latest", 422, "not a public address"),
            ("https://localhost/x.git", 422, "local name"),
            ("ext::sh -c id", 422, "remote helpers"),
            ("--upload-pack=id", 422, "must not start"),
            ("git@github.com:a/b.git", 422, "full URL"),
        ]:
            response = await client.post(
                "/api/servers", json={"name": f"h-{uuid.uuid4().hex[:6]}", "source": {"type": "git", "repo_url": url}}
            )
            assert response.status_code == status, (url, response.text)
            assert words in response.text, (url, response.text)
        assert (await client.get("/api/servers")).json()["count"] == 0

    big = f"big-{uuid.uuid4().hex[:6]}"
    git_server.publish(big, {"Dockerfile": "FROM scratch\n", "blob.bin": uuid.uuid4().bytes * 40000})
    escape = f"escape-{uuid.uuid4().hex[:6]}"
    git_server.publish(escape, {"README.md": "x"}, symlinks={"Dockerfile": "/etc/passwd"})
    before = leftovers()
    async with platform(build_settings, git_max_repo_bytes=64 * 1024, registry_arch_targets="linux/amd64") as local:
        client, _ = await local.user()
        async with client:
            cases = [
                (git_server.url(big), "larger than the limit"),
                (git_server.url(escape), "points outside the build context"),
                ("http://127.0.0.1:9/nothing.git", "git ls-remote failed"),
                (git_server.url(big.replace("big", "missing")), "git ls-remote failed"),
            ]
            for url, reason in cases:
                server = await create_git_server(client, url)
                failed = await deploy(client, server["id"], timeout=300)
                assert failed["status"] == "failed" and reason in failed["error"], (url, failed)
                assert [s["step"] for s in failed["steps"]][-1] == "build"
    await no_new_leftovers(before)

    # Without a container engine there is nothing to build with: create says so.
    async with platform(build_settings, docker_host=None) as bare:
        client, _ = await bare.user()
        async with client:
            response = await client.post(
                "/api/servers",
                json={"name": "no-engine", "source": {"type": "git", "repo_url": git_server.url(escape)}},
            )
            assert response.status_code == 422 and "DOCKER_HOST" in response.text, response.text

    # A platform this host cannot emulate is named, with what to install.
    async with platform(build_settings, registry_arch_targets="linux/amd64,linux/s390x") as multi:
        client, _ = await multi.user()
        async with client:
            server = await create_git_server(client, git_server.url(escape))
            failed = await deploy(client, server["id"], timeout=120)
            assert failed["status"] == "failed"
            assert "linux/s390x" in failed["error"] and "qemu-user-static" in failed["error"]


@pytest.mark.parametrize("kill_at", ["build", "push"])
async def test_worker_killed_during_build_or_push_finishes_once(
    build_settings: dict[str, Any],
    git_server: GitHttpServer,
    registry: Registry,
    docker_engine: Podman,
    workdir: Path,
    kill_at: str,
) -> None:
    name = f"durable-{kill_at}-{uuid.uuid4().hex[:6]}"
    # A build that takes a few seconds, so the kill lands inside it.
    slow = "RUN sleep 4\n" if kill_at == "build" else ""
    revision = git_server.publish(name, {"Dockerfile": f"FROM {ECHO_IMAGE}\n{slow}EXPOSE 8080\n"})
    values = {**build_settings, **registry_settings(registry, workdir)}
    settings = make_settings(
        values.pop("database_url"), values.pop("temporal_address"), values.pop("state_dir"), **values
    )
    stack = Stack(settings, in_process_worker=False)
    await stack.start()
    worker = WorkerProcess(settings, workdir / f"worker-{name}.log")
    worker.start()
    try:
        client, _ = await stack.user()
        async with client:
            server = await create_git_server(client, git_server.url(name))
            accepted = (await client.post(f"/api/servers/{server['id']}/deployments")).json()
            wanted = "build_started" if kill_at == "build" else "push_started"
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                if any(e["event"] == wanted for e in await events(client, server["id"])):
                    break
                await asyncio.sleep(0.05)
            else:
                pytest.fail(f"never saw {wanted}")
            worker.kill()
            at_kill = (await client.get(f"/api/deployments/{accepted['deployment_id']}")).json()
            assert at_kill["status"] == "deploying", "finished before the kill; the test proved nothing"

            worker.start()
            done = await wait_deployment(client, accepted["deployment_id"], timeout=600)
            assert done["status"] == "running", why(done)
            repo = f"mcp/{image_repository(server['id'])}"
            artifacts = (await client.get(f"/api/servers/{server['id']}/artifacts")).json()["data"]
            assert len(artifacts) == 1 and artifacts[0]["status"] == "pushed"
            assert sorted(registry.tags(repo)) == [revision[:12], f"{revision[:12]}-linux-amd64"]
            assert artifacts[0]["manifest_digest"] == done["image_digest"]
            assert len(artifacts[0]["platforms"]) == 1
            engine = docker.DockerClient(base_url=docker_engine.url)
            try:
                containers = labelled_containers(engine, f"{LABEL_SERVER}={server['id']}")
            finally:
                engine.close()
            assert [c.labels[LABEL_DEPLOYMENT] for c in containers] == [accepted["deployment_id"]]
            gateway = f"{stack.base_url}/mcp/{server['slug']}"
            assert await call_tool(gateway, server["api_key"], "add", {"a": 2, "b": 3}) == "5"
            assert (await client.delete(f"/api/servers/{server['id']}")).status_code == 202
    finally:
        worker.stop()
        await stack.stop()
