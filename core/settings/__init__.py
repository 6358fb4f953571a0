"""Process configuration, read from the environment and `.env`.

This is the only package that reads the environment. Everything else receives a `Settings`, composed
here from one class per group of settings:

- services: the database, Temporal and the worker's host
- security: session tokens, sealing keys, Vault and the login limits
- api: where the API listens and is reached, its cookie, registration, webhook bodies
- runtimes: the runtimes, sandbox, packages, resources, gVisor and the stdio bridge
- gateway: the MCP gateway's origins, limits, timeouts and records
- builds: git sources, image builds and the OCI registry
- kubernetes_vm: the kubernetes and virtual-machine runtimes
- supervision: supervision, reconciliation, remediation and retention
"""

from __future__ import annotations

import sys
from functools import lru_cache
from urllib.parse import urlsplit

from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from core.settings.api import ApiSettings
from core.settings.builds import BuildSettings
from core.settings.gateway import GatewaySettings
from core.settings.kubernetes_vm import KubernetesVmSettings
from core.settings.runtimes import IMPLEMENTED_RUNTIMES, RuntimeName, RuntimeSettings, default_state_dir
from core.settings.security import SecuritySettings
from core.settings.services import ServiceSettings
from core.settings.supervision import SupervisionSettings

__all__ = [
    "IMPLEMENTED_RUNTIMES",
    "PLATFORM_SECRETS",
    "RuntimeName",
    "Settings",
    "child_environment",
    "default_state_dir",
    "describe_settings_error",
    "get_settings",
    "load_settings_or_exit",
]


# pydantic takes the fields of the last base first: the groups are listed bottom-up so that the fields
# (and the JSON schema) read services, security, api, runtimes, gateway, builds, kubernetes_vm, supervision.
class Settings(
    SupervisionSettings,
    KubernetesVmSettings,
    BuildSettings,
    GatewaySettings,
    RuntimeSettings,
    ApiSettings,
    SecuritySettings,
    ServiceSettings,
):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    @property
    def kubernetes_enabled(self) -> bool:
        """Whether the kubernetes runtime is configured (a kubeconfig, or the default runtime in a cluster)."""
        return self.container_runtime == "kubernetes" or self.k8s_kubeconfig is not None

    @property
    def vm_enabled(self) -> bool:
        """Whether the virtual-machine runtime is configured (a libvirt URI, or the default runtime)."""
        return self.container_runtime == "virtual-machine" or self.vm_libvirt_uri is not None

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
