"""Git hosts redeploying a git server through signed webhooks, and rolling back to an earlier commit,
on the real stack (git over smart HTTP, podman builds, Temporal, Postgres)."""

from __future__ import annotations

import hashlib
import hmac
import json
import uuid
from typing import Any

import httpx
import pytest

from tests.integration.builds.test_git_builds import (  # noqa: F401 - build_settings is a fixture
    build_settings,
    create_git_server,
    events,
    platform,
    python_repo,
    why,
)
from tests.support.git_server import GitHttpServer
from tests.support.mcp_client import call_tool
from tests.support.stack import wait_deployment

pytestmark = pytest.mark.timeout(900)


def push_payload(revision: str, ref: str = "refs/heads/main") -> dict[str, Any]:
    return {
        "ref": ref,
        "before": "0" * 40,
        "after": revision,
        "deleted": False,
        "repository": {"full_name": "acme/weather", "default_branch": "main"},
    }


def github_headers(secret: str, body: bytes, event: str = "push", delivery: str | None = None) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-Hub-Signature-256": "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest(),
    }


async def deployment_count(client: httpx.AsyncClient, server_id: str) -> int:
    return int((await client.get(f"/api/servers/{server_id}/deployments")).json()["count"])


async def test_github_and_gitlab_pushes_deploy_each_commit_once_and_rollback_reuses_the_artifact(
    build_settings: dict[str, Any],  # noqa: F811 - the fixture imported above
    git_server: GitHttpServer,
) -> None:
    name = f"hooked-{uuid.uuid4().hex[:6]}"
    first_commit = git_server.publish(name, python_repo())
    async with platform(build_settings) as stack:
        client, _ = await stack.user()
        async with client, stack.client() as raw:
            server = await create_git_server(client, git_server.url(name))
            sid, secret = server["id"], server["webhook_secret"]
            hook = f"/api/servers/{sid}/github"
            body = json.dumps(push_payload(first_commit)).encode()

            # Refused: nothing starts, and each refusal is recorded with its reason.
            wrong = await raw.post(hook, content=body, headers=github_headers("wrong-secret", body))
            assert wrong.status_code == 401 and "does not match" in wrong.json()["detail"]
            sha1_only = github_headers(secret, body)
            del sha1_only["X-Hub-Signature-256"]
            sha1_only["X-Hub-Signature"] = "sha1=" + hmac.new(secret.encode(), body, hashlib.sha1).hexdigest()
            sha1 = await raw.post(hook, content=body, headers=sha1_only)
            assert sha1.status_code == 401 and "SHA-1" in sha1.json()["detail"]
            unsigned = {k: v for k, v in github_headers(secret, body).items() if k != "X-Hub-Signature-256"}
            assert (await raw.post(hook, content=body, headers=unsigned)).status_code == 401
            # A body signed, then changed on the way.
            tampered = body.replace(first_commit.encode(), b"f" * 40)
            assert (await raw.post(hook, content=tampered, headers=github_headers(secret, body))).status_code == 401
            oversized = b"{" + b" " * stack.settings.webhook_max_body_bytes + b"}"
            assert (
                await raw.post(hook, content=oversized, headers=github_headers(secret, oversized))
            ).status_code == 413
            other = f"/api/servers/{uuid.uuid4()}/github"
            assert (await raw.post(other, content=body, headers=github_headers(secret, body))).status_code == 404

            # Authentic but nothing to do: ping, another branch, another event.
            ping_body = json.dumps({"zen": "Keep it logically awesome.", "hook_id": 7}).encode()
            ping = await raw.post(hook, content=ping_body, headers=github_headers(secret, ping_body, "ping"))
            assert ping.status_code == 200 and ping.json()["outcome"] == "ignored" and "pong" in ping.json()["reason"]
            feature = json.dumps(push_payload(first_commit, "refs/heads/feature")).encode()
            elsewhere = await raw.post(hook, content=feature, headers=github_headers(secret, feature))
            assert elsewhere.status_code == 200 and "refs/heads/feature" in elsewhere.json()["reason"]
            issue = await raw.post(hook, content=b"{}", headers=github_headers(secret, b"{}", "issues"))
            assert issue.status_code == 200 and issue.json()["outcome"] == "ignored"
            assert await deployment_count(client, sid) == 0

            # The push deploys its commit, once: a redelivery and a second delivery of the commit deploy nothing.
            delivery = str(uuid.uuid4())
            accepted = await raw.post(hook, content=body, headers=github_headers(secret, body, delivery=delivery))
            assert accepted.status_code == 202, accepted.text
            outcome = accepted.json()
            assert outcome["revision"] == first_commit and outcome["workflow_id"] == f"deploy-{sid}-{first_commit}"
            again = await raw.post(hook, content=body, headers=github_headers(secret, body, delivery=delivery))
            assert again.status_code == 200 and "already handled" in again.json()["reason"]
            twice = await raw.post(hook, content=body, headers=github_headers(secret, body))
            assert twice.status_code == 200 and "already deployed" in twice.json()["reason"]
            first = await wait_deployment(client, outcome["deployment_id"], timeout=600)
            assert first["status"] == "running", why(first)
            assert first["revision"] == first_commit
            assert await deployment_count(client, sid) == 1
            url = f"{stack.base_url}/mcp/{server['slug']}"
            assert await call_tool(url, server["api_key"], "forecast", {"city": "Oslo"}) == "sunny in Oslo"

            # GitLab: the token header, a push event, the next commit.
            second_commit = git_server.publish(name, python_repo("\n# second\n"))
            gitlab_push = {
                "object_kind": "push",
                "ref": "refs/heads/main",
                "checkout_sha": second_commit,
                "after": second_commit,
                "project": {"default_branch": "main"},
            }
            gitlab = {"X-Gitlab-Event": "Push Hook", "X-Gitlab-Event-UUID": str(uuid.uuid4())}
            refused = await raw.post(
                f"/api/servers/{sid}/gitlab", json=gitlab_push, headers={**gitlab, "X-Gitlab-Token": "nope"}
            )
            assert refused.status_code == 401
            pushed = await raw.post(
                f"/api/servers/{sid}/gitlab", json=gitlab_push, headers={**gitlab, "X-Gitlab-Token": secret}
            )
            assert pushed.status_code == 202, pushed.text
            second = await wait_deployment(client, pushed.json()["deployment_id"], timeout=600)
            assert second["status"] == "running" and second["revision"] == second_commit, why(second)

            # Rollback to the first commit: the same workflow, its artifact reused, nothing built.
            rolled = await client.post(f"/api/servers/{sid}/rollback", json={"deployment_id": first["id"]})
            assert rolled.status_code == 202, rolled.text
            assert rolled.json()["rolled_back_to"] == first["seq"]
            third = await wait_deployment(client, rolled.json()["deployment_id"], timeout=600)
            assert third["status"] == "running", why(third)
            assert third["revision"] == first_commit and third["artifact_id"] == first["artifact_id"]
            build = next(s for s in third["steps"] if s["step"] == "build")
            assert "reused the artifact" in build["message"]
            seen = [e["event"] for e in await events(client, sid, third["id"])]
            assert "build_reused" in seen and "build_started" not in seen
            assert await call_tool(url, server["api_key"], "forecast", {"city": "Oslo"}) == "sunny in Oslo"

            deliveries = (await client.get(f"/api/servers/{sid}/webhook-deliveries")).json()["data"]
            by_outcome: dict[str, int] = {}
            for d in deliveries:
                by_outcome[d["outcome"]] = by_outcome.get(d["outcome"], 0) + 1
            assert by_outcome == {"rejected": 6, "ignored": 5, "accepted": 2}, deliveries
            assert secret not in json.dumps(deliveries)
            assert (await client.post(f"/api/servers/{sid}/stop")).status_code == 202
