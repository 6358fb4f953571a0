from __future__ import annotations

import re
import secrets
import uuid
from typing import Any

from fastapi import APIRouter, Query, status
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from api.deps import CurrentUser, SessionDep, StateDep, TemporalDep, load_server
from api.schemas.common import ListOf, LogLine, error_responses
from api.schemas.servers import (
    ApiKeyRotated,
    Capabilities,
    ClientConfig,
    ServerCreate,
    ServerCreated,
    ServerPublic,
    ServerUpdate,
    WebhookSecretRotated,
    WorkflowStarted,
)
from core.crypto import env_names
from core.db import notify_route_changed
from core.errors import Conflict, Forbidden, InvalidInput, QuotaExceeded
from core.gitpolicy import GitUrlRejected, check_git_url_policy
from core.isolation import isolation_refusal, weakening_refusal
from core.models import Deployment, Server, ServerLog, User
from core.security import SERVER_KEY_PREFIX, display_prefix, generate_secret_token, hash_token
from core.settings import IMPLEMENTED_RUNTIMES, Settings
from core.sources import CommandSource, GitSource, ImageSource, default_runtime_for, parse_source, runtime_refusal
from core.tenancy import image_refusal
from records.servers import Status as ServerStatus
from records.servers import open_server
from workflows.contracts.starters import start_delete_server, start_stop_server

router = APIRouter(prefix="/api/servers", tags=["servers"])


def slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:63].strip("-")
    return slug or "server"


def gateway_url(state_base: str, slug: str) -> str:
    return f"{state_base}/mcp/{slug}"


def to_public(server: Server, base_url: str) -> dict[str, Any]:
    return {
        "id": server.id,
        "owner_id": server.owner_id,
        "name": server.name,
        "slug": server.slug,
        "source": server.source,
        "runtime": server.runtime,
        "env_keys": env_names(server.env),
        "status": server.status,
        "api_key_prefix": server.api_key_prefix,
        "active_deployment_id": server.active_deployment_id,
        "cpu_limit": server.cpu_limit,
        "memory_limit": server.memory_limit,
        "use_gpu": server.use_gpu,
        "isolation": server.isolation,
        "gateway": server.gateway or {},
        "required_certifications": server.required_certifications or [],
        "gateway_url": gateway_url(base_url, server.slug),
        "created_at": server.created_at,
        "updated_at": server.updated_at,
    }


def check_source_allowed(user: User, source: Any, runtime: str | None, settings: Settings) -> None:
    if isinstance(source, CommandSource) and user.role != "admin":
        raise Forbidden("command sources run executables on the worker host and are for administrators only")
    if isinstance(source, GitSource):
        if not (settings.docker_host or settings.container_runtime == "docker"):
            raise InvalidInput(
                "git sources are built into images and run on the docker runtime, which this installation "
                "has not enabled: set DOCKER_HOST (a Docker or Podman socket) for the API and the worker"
            )
        try:
            check_git_url_policy(source.repo_url, settings.git_allow_insecure_urls)
        except GitUrlRejected as exc:
            raise InvalidInput(str(exc)) from None
    if runtime is not None:
        if runtime not in IMPLEMENTED_RUNTIMES:
            raise InvalidInput(
                f"runtime {runtime!r} is not available in this release (available: {', '.join(IMPLEMENTED_RUNTIMES)})"
            )
    if runtime == "kubernetes" and not settings.kubernetes_enabled:
        raise InvalidInput(
            "the kubernetes runtime is not configured here: set K8S_KUBECONFIG (or CONTAINER_RUNTIME=kubernetes "
            "inside a cluster) for the API and the worker"
        )
    if runtime == "virtual-machine" and not settings.vm_enabled:
        raise InvalidInput(
            "the virtual-machine runtime is not configured here: set VM_LIBVIRT_URI (e.g. qemu:///system) for "
            "the API and the worker"
        )
    # A server that names no runtime gets the installation's, which must be able to run it too.
    effective = runtime or default_runtime_for(source, settings.container_runtime)
    if effective in IMPLEMENTED_RUNTIMES:
        refusal = runtime_refusal(effective, source)
        if refusal is not None:
            raise InvalidInput(refusal)


def check_image_allowed(source: Any, settings: Settings, server_id: uuid.UUID | None) -> None:
    """An image source may not name the platform's own images (other servers' builds, the package images)
    nor an image by its engine id; a server's own build stays allowed once it has an id."""
    if isinstance(source, ImageSource):
        refusal = image_refusal(source.image, settings.registry, str(server_id) if server_id else None)
        if refusal is not None:
            raise InvalidInput(refusal)


def check_resources(
    user: User, cpu: float | None, memory: int | None, gpu: bool, runtime: str | None, settings: Settings
) -> None:
    """Administrators may give any server anything; everyone else stays within the installation's maximums.
    Asking beyond them (or for a GPU the installation lacks) is a well-formed request this installation
    cannot grant: 409."""
    if user.role != "admin":
        if cpu is not None and cpu > settings.max_cpu_limit:
            raise Conflict(f"cpu_limit {cpu} is above this installation's maximum of {settings.max_cpu_limit} cores")
        if memory is not None and memory > settings.max_memory_limit:
            raise Conflict(
                f"memory_limit {memory} MiB is above this installation's maximum of {settings.max_memory_limit} MiB"
            )
    if gpu:
        from runtimes.gpu import gpu_available

        if not gpu_available(settings):
            raise Conflict(
                "use_gpu: this installation has no GPU to give (no NVIDIA device found on the host; an operator "
                "with GPUs sets GPU_AVAILABLE=true)"
            )
        if runtime == "process":
            raise InvalidInput("use_gpu needs the docker runtime; the process runtime does not pass GPUs in")


def check_isolation(user: User, isolation: str | None, runtime: str, settings: Settings) -> None:
    """A server may ask for gVisor on the docker runtime alone (422 elsewhere: it would not be given), and
    for less than the installation's isolation only when its owner is an administrator (403)."""
    refusal = isolation_refusal(isolation, runtime)
    if refusal is not None:
        raise InvalidInput(refusal)
    refusal = weakening_refusal(isolation, settings.container_isolation, admin=user.role == "admin")
    if refusal is not None:
        raise Forbidden(refusal)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ServerCreated, responses=error_responses(403, 409))
async def create_server(body: ServerCreate, user: CurrentUser, session: SessionDep, state: StateDep) -> ServerCreated:
    """Register a server. Its API key and webhook secret are returned once, here: the key is kept as a
    hash, the secret sealed with SECRETS_KEY (the HMAC check needs it)."""
    check_source_allowed(user, body.source, body.runtime, state.settings)
    check_image_allowed(body.source, state.settings, None)
    check_resources(
        user,
        body.cpu_limit,
        body.memory_limit,
        body.use_gpu,
        body.runtime or default_runtime_for(body.source, state.settings.container_runtime),
        state.settings,
    )
    check_isolation(
        user,
        body.isolation,
        body.runtime or default_runtime_for(body.source, state.settings.container_runtime),
        state.settings,
    )
    slug = body.slug or slugify(body.name)
    api_key = generate_secret_token(SERVER_KEY_PREFIX)
    webhook_secret = secrets.token_hex(32)
    try:
        async with session.begin():
            owner = await session.scalar(select(User).where(User.id == user.id).with_for_update())
            assert owner is not None
            owned = await session.scalar(select(func.count()).select_from(Server).where(Server.owner_id == user.id))
            if user.role != "admin" and (owned or 0) >= owner.server_quota:
                raise QuotaExceeded(
                    f"server quota reached ({owned} of {owner.server_quota}); delete a server or ask an "
                    "administrator to raise your quota"
                )
            if await session.scalar(select(Server.id).where(Server.owner_id == user.id, Server.name == body.name)):
                raise Conflict(f"you already have a server named {body.name!r}")
            if await session.scalar(select(Server.id).where(Server.slug == slug)):
                raise Conflict(f'slug {slug!r} is taken; choose another with "slug"')
            server = await open_server(
                session,
                created_by=user.email,
                owner_id=user.id,
                name=body.name,
                slug=slug,
                source=body.source.model_dump(mode="json"),
                runtime=body.runtime,
                env=state.env_cipher.seal(body.env),
                api_key_hash=hash_token(api_key),
                api_key_prefix=display_prefix(api_key),
                webhook_secret=state.env_cipher.seal_text(webhook_secret),
                cpu_limit=body.cpu_limit,
                memory_limit=body.memory_limit,
                use_gpu=body.use_gpu,
                isolation=body.isolation,
                gateway=body.gateway.model_dump(exclude_none=True),
                required_certifications=[r.model_dump() for r in body.required_certifications],
            )
    except IntegrityError as exc:
        # Lost a race with a concurrent create of the same name or slug; anything else is a real bug.
        if not any(c in str(exc.orig) for c in ("uq_servers_owner_name", "servers_slug_key")):
            raise
        raise Conflict(f"a server named {body.name!r} or with slug {slug!r} already exists") from None
    await session.refresh(server)
    state.routes.invalidate(slug)
    return ServerCreated(
        **to_public(server, state.settings.api_base_url), api_key=api_key, webhook_secret=webhook_secret
    )


@router.get("", response_model=ListOf[ServerPublic])
async def list_servers(user: CurrentUser, session: SessionDep, state: StateDep) -> ListOf[ServerPublic]:
    """Your servers; administrators see every server."""
    stmt = select(Server).order_by(Server.created_at)
    if user.role != "admin":
        stmt = stmt.where(Server.owner_id == user.id)
    rows = (await session.scalars(stmt)).all()
    base = state.settings.api_base_url
    return ListOf[ServerPublic](count=len(rows), data=[ServerPublic(**to_public(s, base)) for s in rows])


@router.get("/{server_id}", response_model=ServerPublic)
async def get_server(server_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep) -> ServerPublic:
    server = await load_server(session, user, server_id)
    return ServerPublic(**to_public(server, state.settings.api_base_url))


@router.patch("/{server_id}", response_model=ServerPublic, responses=error_responses(403, 409))
async def update_server(
    server_id: uuid.UUID, body: ServerUpdate, user: CurrentUser, session: SessionDep, state: StateDep
) -> ServerPublic:
    """Change a server's name, source, env or runtime. Source, env and runtime take effect on the next deploy."""
    async with session.begin():
        server = await load_server(session, user, server_id, lock=True)
        if server.status == ServerStatus.DELETING:
            raise Conflict("the server is being deleted")
        source = body.source or parse_source(server.source)
        runtime = body.runtime if "runtime" in body.model_fields_set else server.runtime
        check_source_allowed(user, source, runtime, state.settings)
        # Only a new source: one stored before the rule must not block unrelated changes.
        if body.source is not None:
            check_image_allowed(body.source, state.settings, server.id)
        fields = body.model_fields_set
        cpu = body.cpu_limit if "cpu_limit" in fields else server.cpu_limit
        memory = body.memory_limit if "memory_limit" in fields else server.memory_limit
        gpu = bool(body.use_gpu) if body.use_gpu is not None else server.use_gpu
        check_resources(
            user,
            cpu,
            memory,
            gpu,
            runtime or default_runtime_for(source, state.settings.container_runtime),
            state.settings,
        )
        server.cpu_limit, server.memory_limit, server.use_gpu = cpu, memory, gpu
        isolation = body.isolation if "isolation" in fields else server.isolation
        effective_runtime = runtime or default_runtime_for(source, state.settings.container_runtime)
        if "isolation" in fields:
            check_isolation(user, isolation, effective_runtime, state.settings)
        else:
            # A new runtime or source must still be able to give the isolation the server asked for.
            refusal = isolation_refusal(isolation, effective_runtime)
            if refusal is not None:
                raise InvalidInput(refusal)
        server.isolation = isolation
        if body.name is not None and body.name != server.name:
            clash = await session.scalar(
                select(Server.id).where(Server.owner_id == server.owner_id, Server.name == body.name)
            )
            if clash:
                raise Conflict(f"you already have a server named {body.name!r}")
            server.name = body.name
        if body.source is not None:
            server.source = body.source.model_dump(mode="json")
        if body.env is not None:
            server.env = state.env_cipher.seal(body.env)
        if "runtime" in body.model_fields_set:
            server.runtime = body.runtime
        if body.required_certifications is not None:
            server.required_certifications = [r.model_dump() for r in body.required_certifications]
        if body.gateway is not None:
            server.gateway = body.gateway.model_dump(exclude_none=True)
            # Gateway options take effect at once, on every API and gateway process.
            await notify_route_changed(session, server.slug)
        session.add(ServerLog(server_id=server.id, message=f"server updated by {user.email}"))
    await session.refresh(server)
    state.routes.invalidate(server.slug)
    return ServerPublic(**to_public(server, state.settings.api_base_url))


@router.delete(
    "/{server_id}", status_code=status.HTTP_202_ACCEPTED, response_model=WorkflowStarted, responses=error_responses(409)
)
async def delete_server(
    server_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep, client: TemporalDep
) -> WorkflowStarted:
    """Stop every instance, take the server off the gateway and delete it (a DeleteServerWorkflow)."""
    async with session.begin():
        server = await load_server(session, user, server_id, lock=True)
        previous = server.status
        server.status = ServerStatus.DELETING
    try:
        workflow_id = await start_delete_server(client, state.settings, server.id)
    except Exception:
        async with session.begin():
            server.status = previous
        raise
    return WorkflowStarted(workflow_id=workflow_id, status="deleting")


@router.post(
    "/{server_id}/stop",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=WorkflowStarted,
    responses=error_responses(409),
)
async def stop_server(
    server_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep, client: TemporalDep
) -> WorkflowStarted:
    """Take the server off the gateway and stop its instances (a StopServerWorkflow)."""
    server = await load_server(session, user, server_id)
    if server.status == ServerStatus.DELETING:
        raise Conflict("the server is being deleted")
    workflow_id = await start_stop_server(client, state.settings, server.id)
    return WorkflowStarted(workflow_id=workflow_id, status="stopping")


@router.post("/{server_id}/api-key", response_model=ApiKeyRotated)
async def rotate_api_key(
    server_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep
) -> ApiKeyRotated:
    """Replace the server's API key; the old one stops working at once. The new key is shown once."""
    async with session.begin():
        server = await load_server(session, user, server_id, lock=True)
        api_key = generate_secret_token(SERVER_KEY_PREFIX)
        server.api_key_hash = hash_token(api_key)
        server.api_key_prefix = display_prefix(api_key)
        session.add(ServerLog(server_id=server.id, message=f"API key rotated by {user.email}"))
        # Every other API process drops the old key's cached route as this commits ...
        await notify_route_changed(session, server.slug)
    # ... and this one at once, before its own notification comes back.
    state.routes.invalidate(server.slug)
    return ApiKeyRotated(api_key=api_key, api_key_prefix=server.api_key_prefix)


@router.post("/{server_id}/webhook-secret", response_model=WebhookSecretRotated)
async def rotate_webhook_secret(
    server_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep
) -> WebhookSecretRotated:
    """Replace the server's webhook secret; signatures made with the old one stop matching at once.
    The new secret is shown once."""
    webhook_secret = secrets.token_hex(32)
    async with session.begin():
        server = await load_server(session, user, server_id, lock=True)
        server.webhook_secret = state.env_cipher.seal_text(webhook_secret)
        session.add(ServerLog(server_id=server.id, message=f"webhook secret rotated by {user.email}"))
    return WebhookSecretRotated(webhook_secret=webhook_secret)


@router.get("/{server_id}/capabilities", response_model=Capabilities)
async def capabilities(server_id: uuid.UUID, user: CurrentUser, session: SessionDep) -> Capabilities:
    """Tools, prompts and resources the serving revision reported at its health check."""
    server = await load_server(session, user, server_id)
    caps = server.capabilities or {}
    return Capabilities(server_id=server.id, deployment_id=server.active_deployment_id, **caps)


@router.get("/{server_id}/client-config", response_model=ClientConfig)
async def client_config(server_id: uuid.UUID, user: CurrentUser, session: SessionDep, state: StateDep) -> ClientConfig:
    """A ready-to-paste MCP client configuration. The key itself was shown once at creation (or rotation)."""
    server = await load_server(session, user, server_id)
    url = gateway_url(state.settings.api_base_url, server.slug)
    headers = {"Authorization": f"Bearer <API key {server.api_key_prefix}...>"}
    return ClientConfig(
        url=url,
        headers=headers,
        mcpServers={server.slug: {"type": "streamable-http", "url": url, "headers": headers}},
    )


@router.get("/{server_id}/logs", response_model=ListOf[LogLine])
async def logs(
    server_id: uuid.UUID,
    user: CurrentUser,
    session: SessionDep,
    state: StateDep,
    tail: int = Query(default=200, ge=1, le=5000),
) -> ListOf[LogLine]:
    """Platform events for the server, then the serving instance's own output where this host can read it."""
    server = await load_server(session, user, server_id)
    events = (
        await session.scalars(
            select(ServerLog).where(ServerLog.server_id == server.id).order_by(ServerLog.id.desc()).limit(tail)
        )
    ).all()
    lines = [
        LogLine(
            source="platform",
            level=e.level,
            message=e.message,
            created_at=e.created_at,
            deployment_id=e.deployment_id,
        )
        for e in reversed(events)
    ]
    latest = await session.scalar(
        select(Deployment).where(Deployment.server_id == server.id).order_by(Deployment.seq.desc()).limit(1)
    )
    if latest is not None:
        for text in await state.runtime_log_tail(latest, tail):
            lines.append(LogLine(source="runtime", level="info", message=text, deployment_id=latest.id))
    return ListOf[LogLine](count=len(lines), data=lines)
