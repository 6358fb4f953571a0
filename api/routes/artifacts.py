"""What builds produced and what they reported: build artifacts and telemetry events of a server."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Query
from sqlalchemy import select

from api.deps import CurrentUser, SessionDep, load_server
from api.schemas.artifacts import ArtifactPlatformPublic, ArtifactPublic
from api.schemas.common import ListOf, MetricEvent
from core.errors import InvalidInput
from core.models import BuildArtifactPlatform, BuildArtifactRun, UsageMetric

router = APIRouter(prefix="/api/servers", tags=["artifacts"])


@router.get("/{server_id}/artifacts", response_model=ListOf[ArtifactPublic])
async def list_artifacts(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    limit: int = Query(default=50, ge=1, le=500),
) -> ListOf[ArtifactPublic]:
    """Builds of the server's git source, newest first, with per-platform digests and credential outcomes."""
    server = await load_server(session, user, server_id)
    runs = (
        await session.scalars(
            select(BuildArtifactRun)
            .where(BuildArtifactRun.server_id == server.id)
            .order_by(BuildArtifactRun.created_at.desc())
            .limit(limit)
        )
    ).all()
    platforms: dict[uuid.UUID, list[ArtifactPlatformPublic]] = {run.id: [] for run in runs}
    if runs:
        rows = await session.scalars(
            select(BuildArtifactPlatform)
            .where(BuildArtifactPlatform.run_id.in_(list(platforms)))
            .order_by(BuildArtifactPlatform.platform)
        )
        for row in rows:
            platforms[row.run_id].append(ArtifactPlatformPublic.model_validate(row, from_attributes=True))
    data = [
        ArtifactPublic.model_validate(
            {
                **{c: getattr(run, c) for c in ArtifactPublic.model_fields if c != "platforms"},
                "platforms": platforms[run.id],
            }
        )
        for run in runs
    ]
    return ListOf[ArtifactPublic](count=len(data), data=data)


@router.get("/{server_id}/metrics", response_model=ListOf[MetricEvent])
async def list_metrics(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    event: str | None = Query(default=None, description="Comma-separated event names, e.g. push_retry,push_failed"),
    deployment_id: uuid.UUID | None = Query(default=None, description="Only events of this deployment"),
    after: int = Query(default=0, ge=0, description="Only events with a larger id (for polling)"),
    limit: int = Query(default=500, ge=1, le=5000),
) -> ListOf[MetricEvent]:
    """Usage and build/registry telemetry events of the server, oldest first."""
    server = await load_server(session, user, server_id)
    query = select(UsageMetric).where(UsageMetric.server_id == server.id, UsageMetric.id > after)
    if event:
        names = [name.strip() for name in event.split(",") if name.strip()]
        if not names or any(len(name) > 64 for name in names):
            raise InvalidInput("event must be a comma-separated list of event names")
        query = query.where(UsageMetric.event.in_(names))
    if deployment_id is not None:
        query = query.where(UsageMetric.details["deployment_id"].astext == str(deployment_id))
    rows = (await session.scalars(query.order_by(UsageMetric.id).limit(limit))).all()
    data = [MetricEvent(id=r.id, event=r.event, details=r.details, created_at=r.created_at) for r in rows]
    return ListOf[MetricEvent](count=len(data), data=data)
