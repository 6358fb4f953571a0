from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Header, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from api.deps import CurrentUser, SessionDep, StateDep, TemporalDep, load_server
from api.schemas import (
    DeploymentAccepted,
    DeploymentDetail,
    DeploymentPublic,
    ListOf,
    LiveProgress,
    StepPublic,
)
from api.workflows import deploy_workflow_id, start_deploy
from core.errors import Conflict, InvalidInput, NotFound
from core.models import Deployment, DeploymentStep, Server, User
from core.settings import IMPLEMENTED_RUNTIMES
from core.sources import default_runtime_for, parse_source, runtime_refusal

router = APIRouter(prefix="/api", tags=["deployments"])

IN_PROGRESS = ("pending", "deploying")


def _public(d: Deployment) -> dict[str, Any]:
    return {
        "id": d.id,
        "server_id": d.server_id,
        "seq": d.seq,
        "workflow_id": d.workflow_id,
        "status": d.status,
        "step": d.step,
        "runtime": d.runtime,
        "error": d.error,
        "created_at": d.created_at,
        "finished_at": d.finished_at,
        "revision": d.revision,
        "image_ref": d.image_ref,
        "image_digest": d.image_digest,
        "artifact_id": d.artifact_id,
    }


def _fingerprint(spec: dict[str, Any], runtime: str) -> str:
    return hashlib.sha256(json.dumps([spec, runtime], sort_keys=True).encode()).hexdigest()[:32]


@router.post(
    "/servers/{server_id}/deployments",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeploymentAccepted,
)
async def create_deployment(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    client: TemporalDep,
    response: Response,
    idempotency_key: str | None = Header(default=None, max_length=200),
) -> DeploymentAccepted:
    """Deploy the server's current source and config. Answers at once; a DeployWorkflow does the work.

    Sending the same `Idempotency-Key` again returns the same deployment. Without one, asking again while
    an identical deployment is still under way also returns that deployment."""
    async with session.begin():
        server = await load_server(session, user, server_id, lock=True)
        if server.status == "deleting":
            raise Conflict("the server is being deleted")
        source = parse_source(server.source)
        runtime = server.runtime or default_runtime_for(source, state.settings.container_runtime)
        if runtime not in IMPLEMENTED_RUNTIMES:
            raise InvalidInput(
                f"a {source.type} source cannot run on the {runtime} runtime; change the server's runtime"
            )
        refusal = runtime_refusal(runtime, source)
        if refusal is not None:
            raise InvalidInput(refusal)
        spec = {"source": server.source, "env": server.env or {}}
        auto_prefix = f"auto:{_fingerprint(spec, runtime)}:"
        if idempotency_key:
            if idempotency_key.startswith("auto:"):
                raise InvalidInput("Idempotency-Key must not start with 'auto:'")
            lookup = select(Deployment).where(
                Deployment.server_id == server.id, Deployment.idempotency_key == idempotency_key
            )
        else:
            lookup = select(Deployment).where(
                Deployment.server_id == server.id,
                Deployment.idempotency_key.startswith(auto_prefix, autoescape=True),
                Deployment.status.in_(IN_PROGRESS),
            )
        existing = await session.scalar(lookup.order_by(Deployment.seq.desc()).limit(1))
        if existing is not None:
            deployment = existing
            response.headers["Idempotent-Replayed"] = "true"
        else:
            server.deploy_seq += 1
            deployment = Deployment(
                id=uuid.uuid4(),
                server_id=server.id,
                seq=server.deploy_seq,
                idempotency_key=idempotency_key or f"{auto_prefix}{server.deploy_seq}",
                workflow_id=deploy_workflow_id(server.id, server.deploy_seq),
                status="pending",
                runtime=runtime,
                spec=spec,
                created_by=user.id,
            )
            session.add(deployment)
    try:
        await start_deploy(
            client,
            state.settings,
            server_id=server.id,
            deployment_id=deployment.id,
            workflow_id=deployment.workflow_id,
        )
    except Exception as exc:
        # Nothing will run it: close the record with the reason instead of leaving it pending forever.
        async with session.begin():
            row = await session.get(Deployment, deployment.id, with_for_update=True)
            if row is not None and row.status == "pending":
                row.status = "failed"
                row.error = f"the deployment workflow could not be started: {getattr(exc, 'message', exc)}"
        raise
    return DeploymentAccepted(
        deployment_id=deployment.id,
        workflow_id=deployment.workflow_id,
        status=deployment.status,
        seq=deployment.seq,
    )


@router.get("/servers/{server_id}/deployments", response_model=ListOf[DeploymentPublic])
async def list_deployments(server_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> ListOf[DeploymentPublic]:
    server = await load_server(session, user, server_id)
    rows = (
        await session.scalars(
            select(Deployment).where(Deployment.server_id == server.id).order_by(Deployment.seq.desc()).limit(100)
        )
    ).all()
    return ListOf[DeploymentPublic](count=len(rows), data=[DeploymentPublic(**_public(d)) for d in rows])


async def _visible_deployment(session: AsyncSession, user: User, deployment_id: uuid.UUID) -> Deployment:
    stmt = select(Deployment).join(Server, Server.id == Deployment.server_id).where(Deployment.id == deployment_id)
    if user.role != "admin":
        stmt = stmt.where(Server.owner_id == user.id)
    deployment = await session.scalar(stmt)
    if deployment is None:
        raise NotFound(f"deployment {deployment_id} not found")
    return deployment


async def _recorded(session: AsyncSession, deployment: Deployment) -> DeploymentDetail:
    steps = (
        await session.scalars(
            select(DeploymentStep).where(DeploymentStep.deployment_id == deployment.id).order_by(DeploymentStep.id)
        )
    ).all()
    return DeploymentDetail(**_public(deployment), steps=[StepPublic.model_validate(s) for s in steps])


@router.get("/deployments/{deployment_id}", response_model=DeploymentDetail)
async def get_deployment(
    deployment_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep
) -> DeploymentDetail:
    """The recorded history of steps, plus the workflow's live view of where it is now."""
    deployment = await _visible_deployment(session, user, deployment_id)
    detail = await _recorded(session, deployment)
    if deployment.status in IN_PROGRESS:
        detail.live = await _live_progress(state, deployment.workflow_id)
    return detail


@router.get(
    "/deployments/{deployment_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
)
async def deployment_events(
    deployment_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep
) -> StreamingResponse:
    """Follow a deployment as server-sent events: a `deployment` event with the whole record (as
    `GET /api/deployments/{id}` without `live`) each time it changes, then `end` once it has finished."""
    await _visible_deployment(session, user, deployment_id)
    hub = state.deployment_events
    assert hub is not None
    key = str(deployment_id)

    async def stream() -> AsyncIterator[bytes]:
        wake = hub.subscribe(key)
        last = ""
        idle = 0.0
        try:
            while True:
                wake.clear()
                async with state.sessionmaker() as fresh:
                    deployment = await fresh.get(Deployment, deployment_id)
                    if deployment is None:
                        yield b'event: end\ndata: {"status": "deleted"}\n\n'
                        return
                    payload = (await _recorded(fresh, deployment)).model_dump_json()
                if payload != last:
                    last, idle = payload, 0.0
                    yield f"event: deployment\ndata: {payload}\n\n".encode()
                if deployment.status not in IN_PROGRESS:
                    yield f'event: end\ndata: {{"status": "{deployment.status}"}}\n\n'.encode()
                    return
                try:
                    # A notification wakes us at once; the timeout covers one that got lost.
                    await asyncio.wait_for(wake.wait(), timeout=2.0)
                except TimeoutError:
                    idle += 2.0
                    if idle >= 14.0:
                        idle = 0.0
                        yield b": keep-alive\n\n"
        finally:
            hub.unsubscribe(key, wake)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _live_progress(state: Any, workflow_id: str) -> LiveProgress | None:
    try:
        client = await state.temporal()
        handle = client.get_workflow_handle(workflow_id)
        result = await asyncio.wait_for(handle.query("progress"), timeout=3)
        return LiveProgress(step=result.get("step"), status=result.get("status", "unknown"))
    except Exception:
        return None  # no worker answering right now; the recorded steps still tell the story
