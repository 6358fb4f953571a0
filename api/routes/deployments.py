from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Header, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from api.deploying import IN_PROGRESS, check_idempotency_key, current_spec, launch, open_deployment
from api.deps import CurrentUser, SessionDep, StateDep, TemporalDep, load_server
from api.schemas.common import ListOf, error_responses
from api.schemas.deployments import (
    DeploymentAccepted,
    DeploymentDetail,
    DeploymentPublic,
    LiveProgress,
    RollbackAccepted,
    RollbackRequest,
    RollbackToDeployment,
    RollbackToRevision,
    StepPublic,
)
from api.sse import SSE_RESPONSES, sse_response
from api.workflows import cancel_deploy
from core.errors import Conflict, NotFound
from core.models import Deployment, DeploymentStep, Server, ServerLog, User
from records.deployments import previous_served, rollback_source, served
from workflows.contracts.deploy import DeployWorkflowContract

router = APIRouter(prefix="/api", tags=["deployments"])


def public_deployment(d: Deployment) -> dict[str, Any]:
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


@router.post(
    "/servers/{server_id}/deployments",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeploymentAccepted,
    responses=error_responses(401, 404, 409, 422, 503),
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
    check_idempotency_key(idempotency_key)
    async with session.begin():
        server = await load_server(session, user, server_id, lock=True)
        spec, runtime = current_spec(server, state)
        opened = await open_deployment(
            session, server, spec=spec, runtime=runtime, idempotency_key=idempotency_key, created_by=user.id
        )
        deployment = opened.deployment
    if opened.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    await launch(session, state, client, deployment)
    return DeploymentAccepted(
        deployment_id=deployment.id,
        workflow_id=deployment.workflow_id,
        status=deployment.status,
        seq=deployment.seq,
    )


@router.post(
    "/servers/{server_id}/rollback",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=RollbackAccepted,
    responses=error_responses(401, 404, 409, 422, 503),
)
async def rollback(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    client: TemporalDep,
    response: Response,
    body: RollbackRequest | None = None,
    idempotency_key: str | None = Header(default=None, max_length=200),
) -> RollbackAccepted:
    """Serve an earlier revision again: a new deployment, through the same workflow, of the source (for git
    sources, the exact commit, so its artifact is reused and nothing is rebuilt) and config that revision
    had. Without a body: the newest earlier revision that served. The revision serving now keeps serving
    until the rollback is healthy; a rollback that fails its health check changes nothing."""
    check_idempotency_key(idempotency_key)
    wanted_id = body.deployment_id if isinstance(body, RollbackToDeployment) else None
    wanted_seq = body.seq if isinstance(body, RollbackToRevision) else None
    async with session.begin():
        server = await load_server(session, user, server_id, lock=True)
        found = select(Deployment).where(Deployment.server_id == server.id)
        if wanted_id is not None or wanted_seq is not None:
            found = found.where(Deployment.id == wanted_id if wanted_id is not None else Deployment.seq == wanted_seq)
            target = await session.scalar(found)
            named = wanted_id or f"revision {wanted_seq}"
            if target is None:
                raise NotFound(f"deployment {named} not found on this server")
            if not served(target):
                raise Conflict(f"revision {target.seq} never served ({target.status}): roll back to one that did")
        else:
            target = await previous_served(session, server)
            if target is None:
                raise Conflict("no earlier revision of this server has served: there is nothing to roll back to")
        if target.id == server.active_deployment_id:
            raise Conflict(f"revision {target.seq} is the one serving now")
        spec, runtime = current_spec(server, state, source=rollback_source(target))
        spec["env"] = target.spec.get("env") or {}
        opened = await open_deployment(
            session,
            server,
            spec=spec,
            runtime=target.runtime or runtime,
            idempotency_key=idempotency_key,
            created_by=user.id,
        )
        deployment = opened.deployment
        if not opened.replayed:
            session.add(
                ServerLog(
                    server_id=server.id,
                    deployment_id=deployment.id,
                    message=f"rollback to revision {target.seq} requested by {user.email}",
                )
            )
    if opened.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    await launch(session, state, client, deployment)
    return RollbackAccepted(
        deployment_id=deployment.id,
        workflow_id=deployment.workflow_id,
        status=deployment.status,
        seq=deployment.seq,
        rolled_back_to=target.seq,
    )


@router.get("/servers/{server_id}/deployments", response_model=ListOf[DeploymentPublic])
async def list_deployments(server_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> ListOf[DeploymentPublic]:
    server = await load_server(session, user, server_id)
    rows = (
        await session.scalars(
            select(Deployment).where(Deployment.server_id == server.id).order_by(Deployment.seq.desc()).limit(100)
        )
    ).all()
    return ListOf[DeploymentPublic](count=len(rows), data=[DeploymentPublic(**public_deployment(d)) for d in rows])


async def _visible_deployment(session: AsyncSession, user: User, deployment_id: uuid.UUID) -> Deployment:
    stmt = select(Deployment).join(Server, Server.id == Deployment.server_id).where(Deployment.id == deployment_id)
    if user.role != "admin":
        stmt = stmt.where(Server.owner_id == user.id)
    deployment = await session.scalar(stmt)
    if deployment is None:
        raise NotFound(f"deployment {deployment_id} not found")
    return deployment


def _long_ended(deployment: Deployment) -> bool:
    """Ended a while ago with a step still open (its workflow was lost): the stream stops waiting for it."""
    finished = deployment.finished_at
    return finished is None or (datetime.now(UTC) - finished).total_seconds() > 60


async def _recorded(session: AsyncSession, deployment: Deployment) -> DeploymentDetail:
    steps = (
        await session.scalars(
            select(DeploymentStep).where(DeploymentStep.deployment_id == deployment.id).order_by(DeploymentStep.id)
        )
    ).all()
    settled = deployment.status not in IN_PROGRESS and all(s.status != "started" for s in steps)
    return DeploymentDetail(
        **public_deployment(deployment), steps=[StepPublic.model_validate(s) for s in steps], settled=settled
    )


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


@router.post(
    "/deployments/{deployment_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=DeploymentPublic,
    responses=error_responses(401, 404, 409, 503),
)
async def cancel_deployment(
    deployment_id: uuid.UUID, user: CurrentUser, session: SessionDep, client: TemporalDep
) -> dict[str, Any]:
    """Cancel a deployment under way. The step in progress stops (an install's processes are killed),
    what the deployment started is removed and it ends `cancelled`; the revision serving before keeps
    serving. A deployment already past its route switch keeps serving and says it was cancelled late.
    Follow it at `GET /api/deployments/{id}`."""
    deployment = await _visible_deployment(session, user, deployment_id)
    if deployment.status not in IN_PROGRESS:
        raise Conflict(
            f"deployment {deployment_id} has already ended ({deployment.status}); there is nothing to cancel"
        )
    if not await cancel_deploy(client, deployment.workflow_id):
        # Recorded but never started: nothing runs, so the record ends here.
        await session.execute(
            update(Deployment)
            .where(Deployment.id == deployment.id, Deployment.status.in_(IN_PROGRESS))
            .values(status="cancelled", error="the deployment was cancelled", finished_at=func.now())
        )
        await session.commit()
        await session.refresh(deployment)
    return public_deployment(deployment)


@router.get(
    "/deployments/{deployment_id}/events",
    response_class=StreamingResponse,
    responses=SSE_RESPONSES,
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
                    recorded = await _recorded(fresh, deployment)
                    payload, settled = recorded.model_dump_json(), recorded.settled
                if payload != last:
                    last, idle = payload, 0.0
                    yield f"event: deployment\ndata: {payload}\n\n".encode()
                if deployment.status not in IN_PROGRESS and (settled or _long_ended(deployment)):
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

    return sse_response(stream())


async def _live_progress(state: Any, workflow_id: str) -> LiveProgress | None:
    try:
        client = await state.temporal()
        handle = client.get_workflow_handle(workflow_id)
        result = await asyncio.wait_for(handle.query(DeployWorkflowContract.progress), timeout=3)
        return LiveProgress(step=result.step, status=result.status)
    except Exception:
        return None  # no worker answering right now; the recorded steps still tell the story
