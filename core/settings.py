"""Process configuration, read from the environment and `.env`.

This is the only module that reads the environment. Everything else receives a `Settings`.
"""

from __future__ import annotations

import re
import socket
import sys
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.crypto import EnvCipher, split_keys

RuntimeName = Literal["process", "docker", "kubernetes", "virtual-machine"]

# The runtimes this release can launch; the others are accepted names reserved for later releases.
IMPLEMENTED_RUNTIMES: tuple[str, ...] = ("process", "docker", "kubernetes", "virtual-machine")


def default_state_dir() -> Path:
    return Path.cwd() / ".mcphost"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/mcphost",
        description="SQLAlchemy URL of the platform database (asyncpg driver).",
    )
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_task_queue: str = "mcphost"
    worker_host_id: str = Field(
        default_factory=socket.gethostname,
        pattern=r"^[A-Za-z0-9._-]+$",
        max_length=100,
        description="Names the host a worker acts on (its processes, state directory, engine): the runtime steps "
        "of the instances started there come back through the task queue <TEMPORAL_TASK_QUEUE>-host-<this>.",
    )
    worker_host_wait_seconds: float = Field(
        default=120.0,
        gt=0,
        description="How long a runtime step waits for a worker of the host it must run on; past it, that host "
        "counts as gone (a deployment fails there, a stop goes on without it and says so).",
    )
    jwt_secret: SecretStr = Field(description="HMAC key for session tokens; at least 32 characters.")
    secrets_key: SecretStr = Field(
        description="Key(s) sealing server config env at rest: comma-separated, 32+ characters each; first seals."
    )
    jwt_ttl_seconds: int = Field(default=8 * 3600, ge=60)
    jwt_issuer: str = "mcphost"
    jwt_audience: str = "mcphost-api"
    bind_address: str = "0.0.0.0"
    bind_port: int = Field(default=3000, ge=1, le=65535)
    public_url: str | None = Field(
        default=None, description="Base URL clients use to reach the API; defaults to http://<host>:<port>."
    )
    allow_migration_failure: bool = False
    allow_registration: bool = True
    default_server_quota: int = Field(default=10, ge=0)
    container_runtime: RuntimeName = "process"
    docker_host: str | None = Field(
        default=None,
        description="Docker Engine API endpoint (unix:///run/podman/podman.sock); else the SDK default.",
    )
    state_dir: Path = Field(default_factory=default_state_dir)
    health_check_timeout_seconds: float = Field(default=90.0, gt=0)
    package_install_timeout_seconds: float = Field(default=600.0, gt=0)
    cookie_secure: bool = Field(
        default=False,
        description="Mark the session cookie Secure even when PUBLIC_URL is not https (TLS ended in front of the "
        "API); with an https PUBLIC_URL it always is.",
    )

    # Isolation of hosted servers (see docs/threat-model.md).
    process_sandbox: Literal["required", "off"] = Field(
        default="required",
        description="required: process-runtime servers and installs run in a bubblewrap + slirp4netns sandbox, "
        "and non-administrators' servers are refused where it cannot be set up; off: single-user local use only.",
    )
    sandbox_uid_base: int = Field(
        default=200000,
        ge=1000,
        description="First host uid of the per-server sandbox uids: each server gets one of its own, recorded "
        "when it is created (base + its slot; base + 65536 is the package installer's).",
    )
    sandbox_pids_limit: int = Field(default=512, ge=16, description="Processes (threads) a server may run at once.")
    package_allow_sdist: bool = Field(
        default=False,
        description="Let PyPI installs build source distributions (in the sandbox) and npm run install scripts.",
    )
    package_find_links: str | None = Field(
        default=None,
        description="Local wheel directories (space-separated) pip may install from beside the index; "
        "they are shown read-only to sandboxed installs.",
    )
    package_python_image: str = Field(
        default="python:3.11-slim-bookworm",
        description="Base image of PyPI package sources on the docker runtime; its Python is BUILD_PYTHON_VERSION.",
    )
    default_cpu_limit: float = Field(default=1.0, gt=0, description="Cores a server gets when it names none.")
    max_cpu_limit: float = Field(default=4.0, gt=0, description="Most cores a non-administrator's server may ask for.")
    default_memory_limit: int = Field(default=512, ge=16, description="MiB a server gets when it names none.")
    max_memory_limit: int = Field(default=4096, ge=16, description="Most MiB a non-administrator's server may ask for.")
    gpu_available: bool | None = Field(
        default=None, description="Whether servers may ask for GPUs; unset: detected (/dev/nvidia* present)."
    )
    files_max_bytes: int = Field(default=10 * 1024 * 1024, ge=1, description="Largest file one upload may store.")
    files_quota_bytes: int = Field(default=100 * 1024 * 1024, ge=1, description="Total size of a server's /data.")
    container_isolation: Literal["engine", "gvisor"] = Field(
        default="engine",
        description="Isolation of docker-runtime servers: engine (the engine's default runtime) or gvisor (gVisor's "
        "user-space kernel, CONTAINER_GVISOR_RUNTIME). A server may ask for more; only administrators' for less.",
    )
    container_gvisor_runtime: str = Field(
        default="runsc",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
        description="The engine's name of its gVisor runtime (daemon.json `runtimes`, containers.conf "
        "`[engine.runtimes]`).",
    )
    container_gvisor_docker_host: str | None = Field(
        default=None,
        description="Engine API endpoint gVisor containers are made through, of the same engine as DOCKER_HOST: "
        "Podman's API service runs every container on its own default runtime, so gVisor needs a second service "
        "(`podman --runtime runsc system service`). Unset: DOCKER_HOST, asked for the runtime per container.",
    )

    # Abuse limits of the account endpoints.
    login_rate_per_minute: int = Field(default=10, ge=1, description="Login/register attempts per address a minute.")
    login_account_rate_per_minute: int = Field(
        default=5, ge=1, description="Failed logins per account from one address a minute."
    )
    login_account_ceiling_per_minute: int | None = Field(
        default=None,
        ge=1,
        description="Failed logins per account from all addresses together a minute; past it the account is "
        "refused from everywhere for the rest of that minute. Unset: 10 x LOGIN_ACCOUNT_RATE_PER_MINUTE.",
    )

    # The MCP gateway (/mcp/<slug>): limits, timeouts and what it keeps.
    gateway_allowed_origins: str = Field(
        default="",
        description="Browser origins (scheme://host[:port], comma-separated) allowed to call the gateway, besides "
        "the platform's own (PUBLIC_URL's, and its port on loopback); a request with any other Origin is 403. "
        "Requests without Origin pass.",
    )
    gateway_connect_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    gateway_read_timeout_seconds: float = Field(
        default=300.0, gt=0, le=3600, description="Longest wait for a server's next bytes on a request."
    )
    gateway_sse_keepalive_seconds: float = Field(
        default=15.0,
        gt=0,
        le=300,
        description="SSE comment sent to the client when its stream has been idle this long.",
    )
    gateway_server_concurrency: int = Field(default=128, ge=1, description="Requests in flight to one server at once.")
    gateway_key_concurrency: int = Field(default=64, ge=1, description="Requests in flight with one key at once.")
    gateway_key_rate_per_second: float = Field(default=100.0, gt=0, description="Sustained requests a second per key.")
    gateway_key_burst: int = Field(default=200, ge=1, description="Requests a key may send at once above that rate.")
    gateway_max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    gateway_max_response_bytes: int = Field(
        default=32 * 1024 * 1024, ge=1024, description="Largest response to one POST; past it the stream is cut."
    )
    gateway_route_cache_size: int = Field(default=10_000, ge=10, description="Routes (slugs) each process caches.")
    gateway_pool_size: int = Field(
        default=64, ge=1, description="Idle upstream connections each process keeps open per server for reuse."
    )
    gateway_drain_seconds: float = Field(
        default=300.0, ge=0, description="How long a session-era client keeps its revision after a redeploy."
    )
    gateway_session_idle_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A session with no request and no open stream for this long no longer holds a drain open.",
    )
    gateway_client_idle_seconds: float = Field(
        default=5.0,
        gt=0,
        le=3600,
        description=(
            "How long a request body to /mcp/* may stop arriving before a 408 (under every server); under"
            " mcphost gateway also how long a client connection may wait for its next request (or its head)."
        ),
    )
    gateway_shutdown_grace_seconds: float = Field(
        default=30.0, ge=0, le=3600, description="mcphost gateway: how long SIGTERM lets requests in flight finish."
    )
    gateway_invocation_retention_days: float = Field(default=7.0, gt=0)
    gateway_usage_retention_days: float = Field(default=90.0, gt=0)
    gateway_trace_max_bytes: int = Field(
        default=2048, ge=64, description="Longest argument or result text an opted-in invocation log keeps."
    )
    supervisor_interval_seconds: float = Field(
        default=15.0, ge=0, description="How often a running server is probed at the MCP level (0: no supervision)."
    )
    supervisor_failure_threshold: int = Field(
        default=3, ge=1, description="Failures within SUPERVISOR_WINDOW_SECONDS that mark a server degraded."
    )
    supervisor_window_seconds: float = Field(default=300.0, gt=0, description="The window failures are counted in.")
    supervisor_backoff_max_seconds: float = Field(
        default=60.0, gt=0, description="Longest wait before a restart (the backoff doubles from 1 s)."
    )
    reconcile_interval_seconds: float = Field(
        default=120.0,
        ge=0,
        description="How often each worker's reconciler sets right deployments whose workflow ended without "
        "recording it and removes instances no deployment owns (0: off).",
    )
    reconcile_grace_seconds: float = Field(
        default=120.0,
        ge=0,
        description="How old a deployment record must be before the reconciler looks at it.",
    )
    server_log_retention_days: float = Field(default=30.0, gt=0, description="How long server log lines are kept.")
    server_event_retention_days: float = Field(
        default=90.0, gt=0, description="How long telemetry events (build, registry, supervisor) are kept."
    )
    prune_history_interval_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="How often server log lines and telemetry events past their retention are deleted: one "
        "Temporal schedule `prune-history` for the installation, kept by the workers (0: off).",
    )
    webhook_max_body_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, description="Largest webhook request body accepted (413 beyond it)."
    )
    webhook_delivery_retention: int = Field(
        default=500, ge=10, description="Webhook delivery records kept per server (the newest)."
    )
    bridge_max_sessions: int = Field(
        default=32, ge=1, description="MCP sessions (child processes) one bridged stdio server may hold at once."
    )
    bridge_idle_timeout_seconds: float = Field(
        default=600.0, gt=0, description="A bridged session with no request for this long is ended, its child stopped."
    )
    worker_metrics_port: int | None = Field(
        default=None, ge=1, le=65535, description="Where a worker serves Prometheus /metrics; unset: not served."
    )

    # Git sources and image builds.
    git_allow_insecure_urls: bool = Field(
        default=False, description="Also allow http://, file:// and private hosts as git sources (local/test use)."
    )
    git_clone_timeout_seconds: float = Field(default=300.0, gt=0)
    git_max_repo_bytes: int = Field(default=200 * 1024 * 1024, ge=1024)
    build_timeout_seconds: float = Field(default=1800.0, gt=0)
    build_network_isolation: Literal["required", "off"] = Field(
        default="required",
        description="required: RUN steps of git builds reach the internet but not the build host, its loopback, "
        "private or link-local networks (needs podman as root on the worker's host), and builds are refused "
        "where that cannot be set up; off: they use the engine's default network — unsafe with several tenants.",
    )
    build_python_image: str = "python:3.11-slim-bookworm"
    build_python_version: str = Field(
        default="3.11",
        pattern=r"^3\.[0-9]{1,2}$",
        description="Python of BUILD_PYTHON_IMAGE and PACKAGE_PYTHON_IMAGE (wheels are fetched for it).",
    )
    build_node_image: str = "node:22-bookworm-slim"
    build_rust_image: str = "rust:1-slim-bookworm"

    # The OCI registry built images are pushed to.
    registry: str | None = Field(
        default=None, description="host[:port][/namespace] to push built images to; unset: images stay local."
    )
    registry_insecure: bool = Field(default=False, description="Talk plain HTTP to the registry (loopback/test).")
    registry_auth_dockerconfig: Path | None = None
    registry_auth_refresher: str | None = Field(
        default=None, description="Command run to rewrite REGISTRY_AUTH_DOCKERCONFIG when credentials must rotate."
    )
    k8s_kubeconfig: Path | None = Field(
        default=None, description="Kubeconfig of the cluster the kubernetes runtime uses (unset: in-cluster config)."
    )
    k8s_context: str | None = None
    k8s_namespace: str = Field(default="mcphost", pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    k8s_service_account: str = Field(default="default", pattern=r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")
    k8s_registry_secret_name: str | None = Field(default=None, pattern=r"^[a-z0-9]([-.a-z0-9]{0,251}[a-z0-9])?$")
    k8s_access: Literal["service", "pod"] = "service"
    k8s_data_size: str = Field(default="1Gi", pattern=r"^[0-9]+(Mi|Gi|Ti)$")
    k8s_storage_class: str | None = None
    k8s_ready_timeout_seconds: float = Field(default=300.0, gt=0)
    vm_libvirt_uri: str | None = Field(
        default=None,
        description="libvirt connection of the virtual-machine runtime (qemu:///system; test:///default in tests).",
    )
    vm_network: str = Field(default="default", min_length=1, description="libvirt network guests are attached to.")
    vm_memory_mib: int = Field(default=1024, ge=64, description="Memory of each guest.")
    vm_vcpus: int = Field(default=1, ge=1, le=64, description="Virtual CPUs of each guest.")
    vm_domain_template: Path | None = Field(
        default=None, description="Domain XML template ($name, $uuid, $memory_mib, ...); default: a KVM guest."
    )
    vm_base_image: Path = Field(
        default=Path("/var/lib/mcphost/guest.qcow2"),
        description="The guest OS image every VM boots (read-only, changes discarded on stop).",
    )
    vm_boot_timeout_seconds: float = Field(default=120.0, gt=0, description="How long a guest may take to attest.")
    vm_attestation_port: int = Field(default=9443, ge=1, le=65535, description="Guest agent port serving quotes.")
    vm_attestation_trust_roots: str = Field(
        default="", description="Keys guests' quotes may be signed with: key_id=<base64 Ed25519 public key>,..."
    )
    vm_attestation_measurements: str = Field(
        default="", description="Hex digests of the guest images allowed to serve, comma-separated."
    )
    vm_attestation_max_age_seconds: float = Field(default=300.0, gt=0, description="Oldest quote that is fresh.")
    remediation_allow_private_urls: bool = Field(
        default=False,
        description="Let remediation `http` steps call loopback and private addresses (off: public https only).",
    )
    vault_addr: str | None = Field(
        default=None, description="Vault (or OpenBao) address; with VAULT_TOKEN, server secrets are kept in KV v2."
    )
    vault_token: SecretStr | None = None
    vault_mount: str = Field(default="secret", min_length=1, description="The KV v2 mount server secrets go to.")
    vault_prefix: str = Field(
        default="mcphost", min_length=1, description="Path under the mount: <prefix>/<server id>/<name>."
    )
    vault_cacert: Path | None = Field(default=None, description="CA bundle to verify Vault's TLS certificate.")
    registry_auth_max_age_seconds: int = Field(default=86400, ge=1)
    registry_auth_rotate_lead_seconds: int = Field(default=3600, ge=0)
    registry_push_retries: int = Field(default=3, ge=0, le=20)
    registry_push_backoff_seconds: float = Field(default=1.0, ge=0)
    registry_push_timeout_seconds: float = Field(default=60.0, gt=0)
    registry_arch_targets: str = "linux/amd64"
    registry_build_parallelism: int = Field(default=2, ge=1, le=16)
    registry_build_cache_from: str | None = None
    registry_build_disable_cache: bool = False

    @field_validator("jwt_secret")
    @classmethod
    def _strong_secret(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value()
        if len(raw) < 32:
            raise ValueError("JWT_SECRET must be at least 32 characters (try: openssl rand -hex 32)")
        if raw.lower() in {"changeme" * 4, "secret" * 6}:
            raise ValueError("JWT_SECRET is a well-known default; generate a random one")
        return value

    @field_validator("secrets_key")
    @classmethod
    def _strong_keys(cls, value: SecretStr) -> SecretStr:
        keys = [k.strip() for k in value.get_secret_value().split(",") if k.strip()]
        if not keys or any(len(k) < 32 for k in keys):
            raise ValueError("SECRETS_KEY needs keys of at least 32 characters (try: openssl rand -hex 32)")
        return value

    @field_validator("vm_attestation_trust_roots")
    @classmethod
    def _trust_roots(cls, value: str) -> str:
        from core.attestation import parse_trust_roots

        parse_trust_roots(value)  # ValueError names the entry to fix
        return value

    @field_validator("vm_attestation_measurements")
    @classmethod
    def _measurements(cls, value: str) -> str:
        from core.attestation import parse_measurements

        parse_measurements(value)
        return value

    @field_validator("vault_addr")
    @classmethod
    def _vault_addr(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"https?://[^\s/]+/?", value.strip()):
            raise ValueError("VAULT_ADDR must be an http(s) address such as https://vault.example:8200")
        return value.strip().rstrip("/") if value else None

    @model_validator(mode="after")
    def _login_ceiling(self) -> Settings:
        # At or below the per-address limit, one address's failures would shut the account for everyone.
        ceiling = self.login_account_ceiling_per_minute
        if ceiling is not None and ceiling <= self.login_account_rate_per_minute:
            raise ValueError(
                "LOGIN_ACCOUNT_CEILING_PER_MINUTE must be above LOGIN_ACCOUNT_RATE_PER_MINUTE (failures from one "
                "address), or one address could lock an account out for everyone"
            )
        return self

    @model_validator(mode="after")
    def _vault_pair(self) -> Settings:
        if bool(self.vault_addr) != (self.vault_token is not None):
            raise ValueError("set VAULT_ADDR and VAULT_TOKEN together (or neither: secrets are sealed in Postgres)")
        return self

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        # Accept the plain libpq form users paste and pick the async driver for them.
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value[len(prefix) :]
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("DATABASE_URL must be a PostgreSQL URL (postgresql://...)")
        return value

    @field_validator("gateway_allowed_origins")
    @classmethod
    def _origins(cls, value: str) -> str:
        for origin in (o.strip() for o in value.split(",")):
            if origin and not re.fullmatch(r"https?://[A-Za-z0-9.\[\]:-]+/?", origin):
                raise ValueError(
                    f"{origin!r} is not an origin such as https://app.example.com or http://localhost:5173"
                )
        return value

    @field_validator("registry_arch_targets")
    @classmethod
    def _platforms(cls, value: str) -> str:
        platforms = [p.strip() for p in value.split(",") if p.strip()]
        if not platforms:
            raise ValueError("name at least one platform, e.g. linux/amd64")
        for platform in platforms:
            parts = platform.split("/")
            if len(parts) not in (2, 3) or not all(re.fullmatch(r"[a-z0-9_]+", p) for p in parts):
                raise ValueError(f"{platform!r} is not a platform such as linux/amd64 or linux/arm64/v8")
        return ",".join(platforms)

    @field_validator("registry")
    @classmethod
    def _registry(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        value = value.strip().rstrip("/")
        if "://" in value or not re.fullmatch(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[a-z0-9._/-]+)?", value):
            raise ValueError("REGISTRY must look like registry.example.com[:port][/namespace], without a scheme")
        return value

    @property
    def kubernetes_enabled(self) -> bool:
        """Whether the kubernetes runtime is configured (a kubeconfig, or the default runtime in a cluster)."""
        return self.container_runtime == "kubernetes" or self.k8s_kubeconfig is not None

    @property
    def vm_enabled(self) -> bool:
        """Whether the virtual-machine runtime is configured (a libvirt URI, or the default runtime)."""
        return self.container_runtime == "virtual-machine" or self.vm_libvirt_uri is not None

    @property
    def libvirt_uri(self) -> str:
        return self.vm_libvirt_uri or "qemu:///system"

    def env_cipher(self) -> EnvCipher:
        return EnvCipher(split_keys(self.secrets_key.get_secret_value()))

    @property
    def host_task_queue(self) -> str:
        """The task queue only this host's workers poll: where the runtime steps of its instances run."""
        return f"{self.temporal_task_queue}-host-{self.worker_host_id}"

    @property
    def arch_targets(self) -> list[str]:
        return self.registry_arch_targets.split(",")

    @property
    def allowed_origins(self) -> frozenset[str]:
        """Origins the gateway lets browsers call it from: GATEWAY_ALLOWED_ORIGINS and the platform's own, its
        base URL's (PUBLIC_URL's when set) and, when it listens on loopback or every address, its port on
        127.0.0.1, localhost and [::1]. A page served from the platform's own address is the platform's: a
        DNS-rebinding page names its own host, never one of these."""
        origins = {o.strip().rstrip("/").lower() for o in self.gateway_allowed_origins.split(",") if o.strip()}
        origins.add(_origin(self.api_base_url))
        if self.bind_address in ("0.0.0.0", "::", "127.0.0.1", "::1", "localhost"):
            origins.update(f"http://{host}:{self.bind_port}" for host in ("127.0.0.1", "localhost", "[::1]"))
        return frozenset(origins)

    @property
    def login_account_ceiling(self) -> int:
        return self.login_account_ceiling_per_minute or 10 * self.login_account_rate_per_minute

    @property
    def session_cookie_secure(self) -> bool:
        """Whether the session cookie is Secure: always when clients reach the platform over https."""
        return self.cookie_secure or urlsplit(self.public_url or "").scheme.lower() == "https"

    @property
    def api_base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.bind_address in ("0.0.0.0", "::") else self.bind_address
        return f"http://{host}:{self.bind_port}"


def _origin(url: str) -> str:
    """The Origin a browser sends from a page under `url`: scheme and host, and the port unless the default."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # not a port: the URL is used as written
        return f"{scheme}://{parts.netloc.lower()}"
    if port is None or (scheme, port) in (("http", 80), ("https", 443)):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


# What only the platform's own processes (API, worker, migrations) may hold.
PLATFORM_SECRETS = ("JWT_SECRET", "SECRETS_KEY", "DATABASE_URL")


def child_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a helper process the platform starts (pip, a credential refresher, Temporal's
    dev server): everything but the platform's secrets."""
    import os

    source = dict(os.environ if base is None else base)
    return {k: v for k, v in source.items() if k.upper() not in PLATFORM_SECRETS}


def describe_settings_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        name = "_".join(str(p) for p in err["loc"]).upper() or "configuration"
        if err["type"] == "missing":
            lines.append(f"{name} is required but not set (environment variable or .env).")
        else:
            lines.append(f"{name}: {err['msg']}")
    return "\n".join(lines)


@lru_cache
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]


def load_settings_or_exit() -> Settings:
    """Settings for a process entry point: a configuration error ends the process with a readable message."""
    try:
        return get_settings()
    except ValidationError as exc:
        print(f"mcphost: invalid configuration\n{describe_settings_error(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
