"""Redeploy webhooks: a generic one for CI (`X-Webhook-Secret`), GitHub pushes (`X-Hub-Signature-256`) and
GitLab pushes (`X-Gitlab-Token`), all checked against the server's webhook secret in constant time.

Every request to a known server is recorded in `webhook_deliveries` with its outcome and why (never the
secret or the signature). A provider's delivery id is handled once, and a pushed commit is deployed once:
its deployment's idempotency key and workflow id are derived from the server and the commit."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import re
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from api.deploying import current_spec, launch, open_deployment
from api.deps import AppState, CurrentUser, SessionDep, StateDep, load_server
from api.schemas.common import ListOf, error_responses
from api.schemas.webhooks import WebhookDeliveryPublic, WebhookOutcome, WebhookRedeploy
from core.errors import DomainError, InvalidInput, NotFound, PayloadTooLarge, Unauthorized
from core.models import Server, ServerLog, WebhookDelivery
from core.sources import GitSource, parse_source

router = APIRouter(prefix="/api/servers", tags=["webhooks"])

COMMIT = re.compile(r"^[0-9a-f]{40}$")
ZERO_COMMIT = "0" * 40
_DELIVERY_ID = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
# Rejected deliveries recorded per server and minute: anyone who knows a server's id can send requests
# with a wrong secret, and must not push the genuine deliveries out of the kept window by doing so.
REJECTED_RECORDS_PER_MINUTE = 20


@dataclass
class Intent:
    """What a delivery asks for, once it is authentic."""

    event: str | None
    delivery_id: str | None
    ignore: str | None = None  # nothing to deploy, and why
    ref: str | None = None  # the pushed (or asked for) ref
    revision: str | None = None  # the exact commit to deploy
    branch: str | None = None  # deploy the head of this branch or tag instead of the configured one


async def _body(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise PayloadTooLarge(f"the webhook body is larger than {cap} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise PayloadTooLarge(f"the webhook body is larger than {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _json_object(body: bytes, content_type: str) -> dict[str, Any]:
    """The payload as a JSON object; GitHub's form encoding (`payload=<json>`) is accepted too."""
    if content_type.split(";", 1)[0].strip().lower() == "application/x-www-form-urlencoded":
        values = parse_qs(body.decode("utf-8", errors="replace")).get("payload")
        if not values:
            raise InvalidInput("a form-encoded webhook needs a 'payload' field")
        body = values[0].encode()
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the webhook body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidInput("the webhook body must be a JSON object")
    return payload


def _delivery_id(value: str | None) -> str | None:
    if value is None:
        return None
    if not _DELIVERY_ID.match(value):
        raise InvalidInput("the delivery id header must be 1-200 letters, digits or . _ : -")
    return value


def _secret(state: AppState, server: Server) -> bytes:
    return state.env_cipher.open_text(server.webhook_secret).encode()


def _same(given: str, expected: bytes) -> bool:
    return hmac.compare_digest(given.encode("utf-8", errors="replace"), expected)


def _branch_mismatch(source: GitSource, ref: str, default_branch: Any) -> str | None:
    """Why a push to `ref` is not for this server, or None when it is."""
    want = source.branch or (default_branch if isinstance(default_branch, str) else None)
    if want is None:
        return f"the server builds the repository's default branch and the payload does not say which that is ({ref})"
    if ref in (f"refs/heads/{want}", f"refs/tags/{want}"):
        return None
    return f"push to {ref}; the server deploys {want}"


def _push(payload: dict[str, Any], source: Any, *, event: str, delivery: str | None, kind: str) -> Intent:
    ref, after = payload.get("ref"), payload.get("checkout_sha") or payload.get("after")
    if not isinstance(ref, str) or not ref:
        raise InvalidInput(f"a {kind} push payload needs 'ref'")
    intent = Intent(event=event, delivery_id=delivery, ref=ref[:255])
    if payload.get("deleted") is True or after in (None, ZERO_COMMIT):
        intent.ignore = f"{ref} was deleted: nothing to deploy"
        return intent
    if not isinstance(after, str) or not COMMIT.match(after):
        raise InvalidInput(f"a {kind} push payload needs the pushed commit as 40 lowercase hex digits")
    intent.revision = after
    if not isinstance(source, GitSource):
        intent.ignore = f"the server's source is {source.type}, not git: push events deploy git servers only"
        return intent
    repository = payload.get("repository") if kind == "GitHub" else payload.get("project")
    default_branch = repository.get("default_branch") if isinstance(repository, dict) else None
    intent.ignore = _branch_mismatch(source, ref, default_branch)
    return intent


async def _record(
    session: AsyncSession,
    state: AppState,
    server_id: uuid.UUID,
    provider: str,
    intent: Intent | None,
    outcome: str,
    reason: str,
    status_code: int,
    *,
    deployment_id: uuid.UUID | None = None,
    delivery_id: str | None = None,
) -> None:
    """Add the delivery record (in the caller's transaction) and keep only the newest per server."""
    session.add(
        WebhookDelivery(
            server_id=server_id,
            provider=provider,
            delivery_id=intent.delivery_id if intent else delivery_id,
            event=intent.event[:64] if intent and intent.event else None,
            outcome=outcome,
            reason=reason[:2000],
            status_code=status_code,
            ref=intent.ref if intent else None,
            revision=intent.revision if intent else None,
            deployment_id=deployment_id,
        )
    )
    await session.flush()
    keep = state.settings.webhook_delivery_retention
    old = (
        select(WebhookDelivery.id)
        .where(WebhookDelivery.server_id == server_id)
        .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
        .offset(keep)
    )
    await session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(old)))


async def _reject(
    session: AsyncSession,
    state: AppState,
    server_id: uuid.UUID,
    provider: str,
    error: DomainError,
    delivery: str | None,
) -> None:
    async with session.begin():
        recent = await session.scalar(
            select(func.count())
            .select_from(WebhookDelivery)
            .where(
                WebhookDelivery.server_id == server_id,
                WebhookDelivery.outcome == "rejected",
                WebhookDelivery.created_at > func.now() - timedelta(minutes=1),
            )
        )
        if (recent or 0) >= REJECTED_RECORDS_PER_MINUTE:
            return  # still refused, just not recorded again
        await _record(
            session,
            state,
            server_id,
            provider,
            None,
            "rejected",
            error.message,
            error.status_code,
            delivery_id=delivery,
        )


async def _deliver(
    request: Request,
    server_id: uuid.UUID,
    session: AsyncSession,
    state: AppState,
    provider: str,
    read: Any,
) -> Response:
    """The steps every provider shares: a known server, a bounded body, an authentic request (`read`
    checks it and says what it asks for), then either a recorded reason to do nothing or one deployment."""
    server = await session.get(Server, server_id)
    if server is None:
        raise NotFound(f"server {server_id} not found")
    secret, source = _secret(state, server), parse_source(server.source)
    await session.rollback()  # end the read; each outcome is written in a transaction of its own
    raw_delivery = request.headers.get(
        {"github": "x-github-delivery", "gitlab": "x-gitlab-event-uuid"}.get(provider, "idempotency-key")
    ) or request.headers.get("idempotency-key")
    safe_delivery = raw_delivery if raw_delivery and _DELIVERY_ID.match(raw_delivery) else None
    try:
        body = await _body(request, state.settings.webhook_max_body_bytes)
        intent: Intent = read(request, body, secret, source)
    except DomainError as error:
        await _reject(session, state, server_id, provider, error, safe_delivery)
        raise

    async with session.begin():
        locked = await session.get(Server, server_id, with_for_update=True)
        if locked is None:
            raise NotFound(f"server {server_id} not found")
        if intent.ignore is None and intent.delivery_id is not None:
            earlier = await session.scalar(
                select(WebhookDelivery).where(
                    WebhookDelivery.server_id == server_id,
                    WebhookDelivery.provider == provider,
                    WebhookDelivery.delivery_id == intent.delivery_id,
                    WebhookDelivery.outcome == "accepted",
                )
            )
            if earlier is not None:
                intent.ignore = f"delivery {intent.delivery_id} was already handled"
                if earlier.deployment_id:
                    intent.ignore += f" (deployment {earlier.deployment_id})"
        if intent.ignore is not None:
            await _record(session, state, locked.id, provider, intent, "ignored", intent.ignore, 200)
            return _answer(200, WebhookOutcome(outcome="ignored", reason=intent.ignore, delivery_id=intent.delivery_id))
        try:
            pinned: dict[str, Any] | None = None
            if intent.branch is not None or intent.revision is not None:
                # The server's own source, pointed at the pushed branch or commit.
                pinned = copy.deepcopy(locked.source)
                if pinned.get("type") != "git":
                    raise InvalidInput("ref and revision name git commits; this server's source is not git")
                if intent.branch is not None:
                    pinned["branch"] = intent.branch
                    pinned.pop("ref", None)
                if intent.revision is not None:
                    pinned["ref"] = intent.revision
                pinned = parse_source(pinned).model_dump(mode="json")
            spec, runtime = current_spec(locked, state, source=pinned)
        except DomainError as error:
            await _record(session, state, locked.id, provider, intent, "rejected", error.message, error.status_code)
            return _error(error)
        if intent.revision is not None:
            key: str | None = f"webhook:{intent.revision}"
            workflow_id: str | None = f"deploy-{locked.id}-{intent.revision}"
        elif intent.delivery_id is not None:
            key, workflow_id = f"webhook:{provider}:{intent.delivery_id}", None
        else:
            key, workflow_id = None, None
        opened = await open_deployment(
            session, locked, spec=spec, runtime=runtime, idempotency_key=key, created_by=None, workflow_id=workflow_id
        )
        deployment = opened.deployment
        if opened.replayed and intent.revision is not None:
            reason = (
                f"commit {intent.revision[:12]} was already deployed (deployment {deployment.seq}, {deployment.status})"
            )
            await _record(
                session, state, locked.id, provider, intent, "ignored", reason, 200, deployment_id=deployment.id
            )
            outcome = WebhookOutcome(
                outcome="ignored",
                reason=reason,
                delivery_id=intent.delivery_id,
                deployment_id=deployment.id,
                workflow_id=deployment.workflow_id,
                revision=intent.revision,
            )
            return _answer(200, outcome)
        what = f"commit {intent.revision[:12]}" if intent.revision else f"{intent.branch or 'the configured source'}"
        reason = f"deploying {what} ({provider} {intent.event or 'request'})"
        await _record(session, state, locked.id, provider, intent, "accepted", reason, 202, deployment_id=deployment.id)
        session.add(ServerLog(server_id=locked.id, deployment_id=deployment.id, message=f"webhook: {reason}"))
    client = await state.temporal()
    await launch(session, state, client, deployment)
    return _answer(
        202,
        WebhookOutcome(
            outcome="accepted",
            reason=reason,
            delivery_id=intent.delivery_id,
            deployment_id=deployment.id,
            workflow_id=deployment.workflow_id,
            revision=intent.revision,
        ),
    )


def _answer(status_code: int, outcome: WebhookOutcome) -> JSONResponse:
    return JSONResponse(outcome.model_dump(mode="json"), status_code=status_code)


def _error(error: DomainError) -> JSONResponse:
    return JSONResponse({"detail": error.message, "code": error.code}, status_code=error.status_code)


def _read_generic(request: Request, body: bytes, secret: bytes, source: Any) -> Intent:
    given = request.headers.get("x-webhook-secret")
    if given is None:
        raise Unauthorized("missing X-Webhook-Secret: send the server's webhook secret")
    if not _same(given, secret):
        raise Unauthorized("X-Webhook-Secret does not match the server's webhook secret")
    intent = Intent(event="redeploy", delivery_id=_delivery_id(request.headers.get("idempotency-key")))
    if body.strip():
        try:
            asked = WebhookRedeploy.model_validate(_json_object(body, request.headers.get("content-type", "")))
        except ValueError as exc:
            raise InvalidInput(f"webhook body: {exc}") from None
        if asked.ref is not None:
            intent.ref = asked.ref
            intent.branch = asked.ref.removeprefix("refs/heads/").removeprefix("refs/tags/")
        intent.revision = asked.revision
    return intent


def _read_github(request: Request, body: bytes, secret: bytes, source: Any) -> Intent:
    signature = request.headers.get("x-hub-signature-256")
    if signature is None:
        if request.headers.get("x-hub-signature") is not None:
            raise Unauthorized("only X-Hub-Signature-256 (HMAC-SHA256) is accepted, not the SHA-1 X-Hub-Signature")
        raise Unauthorized("missing X-Hub-Signature-256: set the hook's secret to the server's webhook secret")
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    if not _same(signature, expected.encode()):
        raise Unauthorized("X-Hub-Signature-256 does not match the body signed with the server's webhook secret")
    event = request.headers.get("x-github-event")
    if not event:
        raise InvalidInput("missing X-GitHub-Event")
    delivery = _delivery_id(request.headers.get("x-github-delivery"))
    payload = _json_object(body, request.headers.get("content-type", ""))
    if event == "ping":
        hook = payload.get("hook_id")
        return Intent(event=event, delivery_id=delivery, ignore=f"pong: hook {hook} reaches this server")
    if event != "push":
        return Intent(
            event=event[:64], delivery_id=delivery, ignore=f"the {event[:64]} event is not handled: send push"
        )
    return _push(payload, source, event=event, delivery=delivery, kind="GitHub")


def _read_gitlab(request: Request, body: bytes, secret: bytes, source: Any) -> Intent:
    token = request.headers.get("x-gitlab-token")
    if token is None:
        raise Unauthorized("missing X-Gitlab-Token: set the hook's secret token to the server's webhook secret")
    if not _same(token, secret):
        raise Unauthorized("X-Gitlab-Token does not match the server's webhook secret")
    event = request.headers.get("x-gitlab-event") or ""
    delivery = _delivery_id(request.headers.get("x-gitlab-event-uuid") or request.headers.get("idempotency-key"))
    payload = _json_object(body, request.headers.get("content-type", ""))
    if payload.get("object_kind") not in ("push", "tag_push"):
        kind = str(payload.get("object_kind") or event or "unknown")[:64]
        return Intent(event=kind, delivery_id=delivery, ignore=f"the {kind} event is not handled: send push events")
    return _push(payload, source, event=str(payload["object_kind"]), delivery=delivery, kind="GitLab")


HOOK_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": WebhookOutcome, "description": "Authentic, but nothing to deploy (ping, other branch, duplicate)"},
    202: {"model": WebhookOutcome, "description": "A deployment was started"},
    **error_responses(401, 404, 413, 422, 503),
}


@router.post("/{server_id}/webhook", status_code=202, response_model=WebhookOutcome, responses=HOOK_RESPONSES)
async def generic_webhook(server_id: uuid.UUID, request: Request, session: SessionDep, state: StateDep) -> Response:
    """Redeploy from CI: `X-Webhook-Secret: <the server's webhook secret>`. An optional JSON body names a
    git `revision` (exact commit) or `ref` (branch or tag) to deploy; `Idempotency-Key` makes a retry safe."""
    return await _deliver(request, server_id, session, state, "generic", _read_generic)


@router.post("/{server_id}/github", status_code=202, response_model=WebhookOutcome, responses=HOOK_RESPONSES)
async def github_webhook(server_id: uuid.UUID, request: Request, session: SessionDep, state: StateDep) -> Response:
    """A GitHub webhook (content type JSON or form, secret = the server's webhook secret): `push` to the
    server's branch deploys the pushed commit once, `ping` is answered, other events and branches are
    ignored with the reason."""
    return await _deliver(request, server_id, session, state, "github", _read_github)


@router.post("/{server_id}/gitlab", status_code=202, response_model=WebhookOutcome, responses=HOOK_RESPONSES)
async def gitlab_webhook(server_id: uuid.UUID, request: Request, session: SessionDep, state: StateDep) -> Response:
    """A GitLab webhook (secret token = the server's webhook secret): push and tag push events to the
    server's branch deploy the pushed commit once; other events are ignored with the reason."""
    return await _deliver(request, server_id, session, state, "gitlab", _read_gitlab)


@router.get(
    "/{server_id}/webhook-deliveries",
    response_model=ListOf[WebhookDeliveryPublic],
    responses=error_responses(401, 404, 422),
)
async def list_deliveries(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    limit: int = Query(default=50, ge=1, le=500),
) -> ListOf[WebhookDeliveryPublic]:
    """The server's webhook deliveries, newest first: what each asked for and what came of it."""
    server = await load_server(session, user, server_id)
    rows = (
        await session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.server_id == server.id)
            .order_by(WebhookDelivery.created_at.desc(), WebhookDelivery.id.desc())
            .limit(limit)
        )
    ).all()
    return ListOf[WebhookDeliveryPublic](count=len(rows), data=[WebhookDeliveryPublic.model_validate(r) for r in rows])
