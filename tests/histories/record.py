"""Record workflow histories for the replay tests (tests/unit/test_replay.py).

Run when a workflow changes on purpose (behind `workflow.patched()`), to add histories of the new
code next to the old ones; never delete old histories while workers might still replay them.

    .venv/bin/python tests/histories/record.py

Starts the same real components as the integration tests (Temporal dev server, Postgres, podman,
a registry, a git server), runs a package deployment, a git deployment with build and push, a stop
and a delete, and writes each workflow's history as JSON here.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.support.build_platform import build_platform  # noqa: E402
from tests.support.components import ECHO_IMAGE  # noqa: E402
from tests.support.stack import deploy  # noqa: E402

HERE = Path(__file__).resolve().parent


async def main() -> None:
    async with build_platform() as parts:
        client, _ = await parts.stack.user()
        async with client:
            time_server = (
                await client.post(
                    "/api/servers",
                    json={"name": "rec-time", "source": {"type": "package", "package": "mcp-server-time"}},
                )
            ).json()
            package = await deploy(client, time_server["id"])
            parts.git.publish("rec", {"Dockerfile": f"FROM {ECHO_IMAGE}\nEXPOSE 8080\n"})
            git_server = (
                await client.post(
                    "/api/servers",
                    json={"name": "rec-git", "source": {"type": "git", "repo_url": parts.git.url("rec")}},
                )
            ).json()
            built = await deploy(client, git_server["id"], timeout=600)
            assert package["status"] == built["status"] == "running", (package, built)
            await client.post(f"/api/servers/{time_server['id']}/stop")
            await client.delete(f"/api/servers/{git_server['id']}")
            await asyncio.sleep(5)
        names = {
            "deploy_package": package["workflow_id"],
            "deploy_git": built["workflow_id"],
            "build": f"build-{built['id']}",
            "push": f"push-{built['id']}",
            "stop": f"stop-{time_server['id']}",
            "delete": f"delete-{git_server['id']}",
        }
        for name, workflow_id in names.items():
            history = await parts.env.client.get_workflow_handle(workflow_id).fetch_history()
            (HERE / f"{name}.json").write_text(history.to_json())
            print(f"recorded {name}: {workflow_id} ({len(history.events)} events)")


if __name__ == "__main__":
    asyncio.run(main())
