"""The kubernetes runtime against a real kube-apiserver (with etcd, controller-manager and scheduler):
the objects a deployment makes, an MCP server answering through the gateway, redeploy, stop and delete
leaving the cluster clean, the pull Secret rewritten after a credential refresh, and the fallback to
docker when the cluster cannot be reached."""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from runtimes.kubernetes_spec import K_DEPLOYMENT, K_SERVER, K_SLUG, MANAGED_BY, READY_GATE, claim_name, object_name
from tests.support.components import Podman, free_port, require
from tests.support.kube import Cluster, FakeKubelet, ensure_binaries
from tests.support.mcp_client import call_tool
from tests.support.stack import Stack, WorkerProcess, deploy, make_settings, wait_deployment

pytestmark = pytest.mark.timeout(300)
NAMESPACE = "mcphost-test"
SERVICE_ACCOUNT = "mcp-servers"
PULL_SECRET = "mcphost-pull"


def dockerconfig(password: str) -> str:
    auth = base64.b64encode(f"mcphost:{password}".encode()).decode()
    return json.dumps({"auths": {"registry.example:5000": {"auth": auth}}})


@pytest.fixture(scope="module")
def cluster(workdir: Path, docker_engine: Podman) -> Iterator[tuple[Cluster, FakeKubelet]]:
    require(ensure_binaries(), "kube-apiserver 1.20.2 and etcd (tests/support/k8s/build.sh, as root on Debian)")
    control = Cluster(workdir / "kube").start()
    kubelet: FakeKubelet | None = None
    try:
        control.wait_namespace_ready(NAMESPACE)
        from kubernetes import client

        core = client.CoreV1Api(control.client())
        core.create_namespaced_service_account(
            NAMESPACE, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=SERVICE_ACCOUNT))
        )
        kubelet = FakeKubelet(control, NAMESPACE, docker_engine.url).start()
        yield control, kubelet
    finally:
        if kubelet is not None:
            kubelet.stop()
        control.stop()


@pytest.fixture(scope="module")
async def kube_stack(
    cluster: tuple[Cluster, FakeKubelet],
    temporal_address: str,
    database_url: str,
    process_state_dir: Path,
    docker_engine: Podman,
    workdir: Path,
) -> AsyncIterator[Stack]:
    platform = Stack(
        kube_settings(cluster[0], temporal_address, database_url, process_state_dir, docker_engine, workdir)
    )
    await platform.start()
    yield platform
    await platform.stop()


def kube_settings(
    control: Cluster, temporal_address: str, database_url: str, state: Path, docker_engine: Podman, workdir: Path
) -> Settings:
    """A platform whose kubernetes runtime uses the test cluster, reaching pods by their IP."""
    auth = workdir / "kube-dockerconfig.json"
    auth.write_text(dockerconfig("first"))
    refresher = workdir / "kube-refresh.sh"
    refresher.write_text(f"#!/bin/sh\ncat > {auth} <<'EOF'\n{dockerconfig('rotated')}\nEOF\n")
    refresher.chmod(0o755)
    return make_settings(
        database_url,
        temporal_address,
        state,
        docker_host=docker_engine.url,
        k8s_kubeconfig=control.kubeconfig,
        k8s_namespace=NAMESPACE,
        k8s_service_account=SERVICE_ACCOUNT,
        k8s_registry_secret_name=PULL_SECRET,
        k8s_access="pod",
        registry_auth_dockerconfig=auth,
        registry_auth_refresher=str(refresher),
    )


def apis(control: Cluster) -> tuple[Any, Any]:
    from kubernetes import client

    api = control.client()
    return client.CoreV1Api(api), client.AppsV1Api(api)


async def until(condition: Any, what: str, bound: float = 60) -> Any:
    deadline = time.monotonic() + bound
    while True:
        value = await asyncio.to_thread(condition)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still not so after {bound} s: {what}")
        await asyncio.sleep(0.2)


def left_of(control: Cluster, server_id: str) -> dict[str, list[str]]:
    """What the cluster still holds of a server."""
    core, apps = apis(control)
    selector = f"{K_SERVER}={server_id}"
    return {
        kind: names
        for kind, names in {
            "deployments": [
                d.metadata.name for d in apps.list_namespaced_deployment(NAMESPACE, label_selector=selector).items
            ],
            "services": [
                s.metadata.name for s in core.list_namespaced_service(NAMESPACE, label_selector=selector).items
            ],
            "secrets": [s.metadata.name for s in core.list_namespaced_secret(NAMESPACE, label_selector=selector).items],
            "pods": [p.metadata.name for p in core.list_namespaced_pod(NAMESPACE, label_selector=selector).items],
            "claims": [
                c.metadata.name
                for c in core.list_namespaced_persistent_volume_claim(NAMESPACE, label_selector=selector).items
            ],
        }.items()
        if names
    }


async def test_a_revision_is_a_deployment_and_service_that_answers_and_goes_cleanly(
    kube_stack: Stack, cluster: tuple[Cluster, FakeKubelet], docker_engine: Podman
) -> None:
    control, kubelet = cluster
    core, apps = apis(control)
    image = docker_engine.ensure_echo_image()
    token = "kube-" + uuid.uuid4().hex
    owner, _ = await kube_stack.user()
    async with owner:
        created = await owner.post(
            "/api/servers",
            json={
                "name": f"kube-{uuid.uuid4().hex[:6]}",
                "source": {"type": "image", "image": image},
                "runtime": "kubernetes",
                "env": {"GREETING": "hi"},
                "cpu_limit": 0.5,
                "memory_limit": 256,
            },
        )
        assert created.status_code == 201, created.text
        server = created.json()
        package = await owner.post(
            "/api/servers",
            json={"name": "kube-pkg", "source": {"type": "package", "package": "x"}, "runtime": "kubernetes"},
        )
        assert package.status_code == 422 and "runs image and git sources" in package.text
        assert (
            await owner.post(f"/api/servers/{server['id']}/secrets", json={"name": "UPSTREAM_TOKEN", "value": token})
        ).status_code == 201
        first = await deploy(owner, server["id"])
        assert first["status"] == "running", (first.get("error"), kubelet.describe())

        # The revision's objects, labelled and confined as promised.
        name = object_name(first["id"])
        made = apps.read_namespaced_deployment(name, NAMESPACE)
        labels = made.metadata.labels
        assert labels[MANAGED_BY] == "mcphost" and labels[K_SERVER] == server["id"]
        assert labels[K_DEPLOYMENT] == first["id"] and labels[K_SLUG] == server["slug"]
        pod_spec = made.spec.template.spec
        assert pod_spec.service_account_name == SERVICE_ACCOUNT and pod_spec.automount_service_account_token is False
        # An image the source names is no build of the platform's: the platform's pull Secret stays off it.
        assert pod_spec.image_pull_secrets is None
        assert [g.condition_type for g in pod_spec.readiness_gates] == [READY_GATE]
        container = pod_spec.containers[0]
        assert container.image == image
        assert container.resources.limits == {"cpu": "500m", "memory": "256Mi"}
        security = container.security_context
        assert security.capabilities.drop == ["ALL"] and security.allow_privilege_escalation is False
        assert security.run_as_non_root is True and security.run_as_user >= 200000
        assert pod_spec.volumes[0].persistent_volume_claim.claim_name == claim_name(server["id"])
        assert core.read_namespaced_service(name, NAMESPACE).spec.selector == {K_DEPLOYMENT: first["id"]}
        assert core.read_namespaced_persistent_volume_claim(claim_name(server["id"]), NAMESPACE).status.phase == "Bound"
        # Config env and secrets are in the revision's Secret, not in the Deployment object.
        env = core.read_namespaced_secret(name, NAMESPACE).data
        assert base64.b64decode(env["UPSTREAM_TOKEN"]).decode() == token and "GREETING" in env
        assert token not in json.dumps(apps.api_client.sanitize_for_serialization(made))
        pull = core.read_namespaced_secret(PULL_SECRET, NAMESPACE)
        assert pull.type == "kubernetes.io/dockerconfigjson"

        # Ready only after the platform's MCP health check set the readiness gate.
        ready = await until(
            lambda: (apps.read_namespaced_deployment(name, NAMESPACE).status.ready_replicas or 0) == 1, "ready"
        )
        assert ready
        gateway = f"{kube_stack.base_url}/mcp/{server['slug']}"
        assert await call_tool(gateway, server["api_key"], "echo", {"text": "via a pod"}) == "echo: via a pod"

        # A redeploy makes the next revision's objects and removes the previous one's.
        second = await deploy(owner, server["id"])
        assert second["status"] == "running", (second.get("error"), kubelet.describe())
        assert await call_tool(gateway, server["api_key"], "echo", {"text": "again"}) == "echo: again"
        await until(
            lambda: set(left_of(control, server["id"]).get("deployments", [])) == {object_name(second["id"])},
            "one revision",
        )
        await until(lambda: len(left_of(control, server["id"]).get("pods", [])) == 1, "one pod")

        # Stop leaves only the claim (its /data); delete leaves nothing.
        stopped = await owner.post(f"/api/servers/{server['id']}/stop")
        assert stopped.status_code == 202, stopped.text
        await until(lambda: set(left_of(control, server["id"])) == {"claims"}, "only the claim after stop", 90)
        deleting = await owner.delete(f"/api/servers/{server['id']}")
        assert deleting.status_code == 202, deleting.text
        await until(lambda: left_of(control, server["id"]) == {}, "nothing after delete", 90)
    assert not kubelet.errors, kubelet.errors


async def test_the_pull_secret_is_rewritten_after_a_credential_refresh(
    kube_stack: Stack, cluster: tuple[Cluster, FakeKubelet]
) -> None:
    from activities.registry import RegistryActivities
    from builds.images import ImageBuilder
    from runtimes import build_executors
    from worker.main import start_kubernetes

    control, _ = cluster
    core, _ = apis(control)
    settings = kube_stack.settings
    # The worker's own wiring: a refresh by the registry steps is followed by the Secret's rewrite.
    registry = RegistryActivities(kube_stack.state.sessionmaker, settings, ImageBuilder(settings.docker_host))
    executors = build_executors(settings)
    kube = await start_kubernetes(executors, registry)
    assert kube is not None
    try:
        await kube.sync_pull_secret()

        def current() -> str:
            data = core.read_namespaced_secret(PULL_SECRET, NAMESPACE).data[".dockerconfigjson"]
            return base64.b64decode(data).decode()

        assert json.loads(current()) == json.loads(dockerconfig("first"))
        assert await registry._run_refresher() is None
        assert json.loads(current()) == json.loads(dockerconfig("rotated"))
    finally:
        for executor in executors.values():
            await executor.close()
        assert settings.registry_auth_dockerconfig is not None
        settings.registry_auth_dockerconfig.write_text(dockerconfig("first"))


async def test_an_unreachable_cluster_falls_back_to_docker_with_a_policy_note(
    temporal_address: str, database_url: str, process_state_dir: Path, docker_engine: Podman, workdir: Path
) -> None:
    kubeconfig = workdir / "unreachable.kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\n"
        f"clusters:\n- name: gone\n  cluster: {{server: 'https://127.0.0.1:{free_port()}'}}\n"
        "users:\n- name: u\n  user: {token: nothing}\n"
        "contexts:\n- name: gone\n  context: {cluster: gone, user: u}\ncurrent-context: gone\n"
    )
    settings = make_settings(
        database_url, temporal_address, process_state_dir, docker_host=docker_engine.url, k8s_kubeconfig=kubeconfig
    )
    platform = Stack(settings)
    await platform.start()
    try:
        owner, _ = await platform.user()
        async with owner:
            created = await owner.post(
                "/api/servers",
                json={
                    "name": f"fallback-{uuid.uuid4().hex[:6]}",
                    "source": {"type": "image", "image": docker_engine.ensure_echo_image()},
                    "runtime": "kubernetes",
                },
            )
            assert created.status_code == 201, created.text
            server = created.json()
            done = await deploy(owner, server["id"])
            assert done["status"] == "running", done
            gateway = f"{platform.base_url}/mcp/{server['slug']}"
            assert await call_tool(gateway, server["api_key"], "echo", {"text": "on docker"}) == "echo: on docker"
            decisions = (await owner.get(f"/api/servers/{server['id']}/policy-decisions")).json()["data"]
            fallback = [d for d in decisions if "runtime:fallback:docker" in d["notes"]]
            assert len(fallback) == 1 and fallback[0]["backend"] == "docker"
            assert "runtime:kubernetes:unreachable" in fallback[0]["notes"]
            logs = (await owner.get(f"/api/servers/{server['id']}/logs")).text
            assert "running on docker instead" in logs
            await owner.delete(f"/api/servers/{server['id']}")
    finally:
        await platform.stop()


async def test_a_worker_killed_mid_launch_leaves_exactly_one_revision(
    cluster: tuple[Cluster, FakeKubelet],
    temporal_address: str,
    database_url: str,
    process_state_dir: Path,
    docker_engine: Podman,
    workdir: Path,
) -> None:
    control, kubelet = cluster
    _, apps = apis(control)
    settings = kube_settings(control, temporal_address, database_url, process_state_dir, docker_engine, workdir)
    platform = Stack(settings, in_process_worker=False)
    await platform.start()
    worker = WorkerProcess(settings, workdir / f"kube-worker-{uuid.uuid4().hex[:6]}.log")
    worker.start()
    try:
        owner, _ = await platform.user()
        async with owner:
            server = (
                await owner.post(
                    "/api/servers",
                    json={
                        "name": f"kube-kill-{uuid.uuid4().hex[:6]}",
                        "source": {"type": "image", "image": docker_engine.ensure_echo_image()},
                        "runtime": "kubernetes",
                    },
                )
            ).json()
            accepted = (await owner.post(f"/api/servers/{server['id']}/deployments")).json()
            # Kill the worker once the launch has made the revision's Deployment, before it serves.
            await until(lambda: left_of(control, server["id"]).get("deployments"), "the Deployment exists", 120)
            worker.kill()
            at_kill = (await owner.get(f"/api/deployments/{accepted['deployment_id']}")).json()
            assert at_kill["status"] == "deploying", "the deployment finished before the kill; the test proved nothing"
            worker.start()
            done = await wait_deployment(owner, accepted["deployment_id"], timeout=180)
            assert done["status"] == "running", (done.get("error"), done.get("steps"), kubelet.describe())
            held = left_of(control, server["id"])
            name = object_name(accepted["deployment_id"])
            assert held["deployments"] == [name] and held["services"] == [name] and len(held["pods"]) == 1, held
            gateway = f"{platform.base_url}/mcp/{server['slug']}"
            assert await call_tool(gateway, server["api_key"], "echo", {"text": "once"}) == "echo: once"
            assert (await owner.delete(f"/api/servers/{server['id']}")).status_code == 202
            await until(lambda: left_of(control, server["id"]) == {}, "nothing after delete", 90)
    finally:
        worker.stop()
        await platform.stop()
