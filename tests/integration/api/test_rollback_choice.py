"""A manual rollback and a remediation's "redeploy previous" serve the same earlier revision again: the
newest one before the serving revision that reached the gateway, whatever ended it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from activities.remediation import RemediationActivities, StepInput
from core.db import make_engine, make_sessionmaker
from core.models import Deployment, Server
from tests.support.stack import Stack, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
async def sessions(stack: Stack) -> AsyncIterator[async_sessionmaker[AsyncSession]]:
    engine = make_engine(stack.settings.database_url, pool_size=2)
    yield make_sessionmaker(engine)
    await engine.dispose()


async def _history(sessions: async_sessionmaker[AsyncSession], server_id: str, statuses: list[str]) -> None:
    """Revisions 1..n with these statuses, each of which reached the gateway; the last one serves."""
    sid = uuid.UUID(server_id)
    async with sessions() as session, session.begin():
        server = await session.get(Server, sid, with_for_update=True)
        assert server is not None
        rows = [
            Deployment(
                server_id=sid,
                seq=seq,
                idempotency_key=f"history-{seq}",
                workflow_id=f"history-{sid}-{seq}",
                status=status,
                runtime="docker",
                spec={"source": server.source, "env": {}},
                upstream_url=f"http://127.0.0.1:1/revision-{seq}",
            )
            for seq, status in enumerate(statuses, start=1)
        ]
        session.add_all(rows)
        await session.flush()
        await session.execute(
            update(Server)
            .where(Server.id == sid)
            .values(deploy_seq=len(rows), active_seq=len(rows), active_deployment_id=rows[-1].id, status="running")
        )


async def test_rollback_and_remediation_choose_the_same_revision(
    stack: Stack, sessions: async_sessionmaker[AsyncSession]
) -> None:
    client, _ = await stack.user()
    async with client:
        created = await client.post(
            "/api/servers",
            json={
                "name": f"history-{uuid.uuid4().hex[:6]}",
                "source": {"type": "image", "image": "localhost/mcphost-no-such-image:1"},
            },
        )
        assert created.status_code == 201, created.text
        server_id = created.json()["id"]
        # Revision 2 served, then revision 3 took over before 2 finished: it ended `superseded`.
        await _history(sessions, server_id, ["stopped", "superseded", "running"])

        rollback = await client.post(f"/api/servers/{server_id}/rollback")
        assert rollback.status_code == 202, rollback.text
        remediation = RemediationActivities(sessions, stack.settings)
        step = await remediation._open_previous(
            StepInput(run_id=str(uuid.uuid4()), server_id=server_id, index=0, step={"kind": "redeploy_previous"})
        )
        assert step.ok, step.reason
        assert rollback.json()["rolled_back_to"] == 2
        assert step.detail.startswith("redeploying revision 2 as "), step.detail

        assert (await client.delete(f"/api/servers/{server_id}")).status_code == 202

        async def gone() -> bool:
            return (await client.get(f"/api/servers/{server_id}")).status_code == 404

        await wait_for(gone, "the server's deletion", timeout=180)
