"""The API process: where it listens, the address clients reach it at, its session cookie, who may
register and how many servers they may own, and the largest webhook body it takes."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import Field
from pydantic_settings import BaseSettings


class ApiSettings(BaseSettings):
    """Listening, public address, cookie, registration and webhook bodies."""

    bind_address: str = "0.0.0.0"
    bind_port: int = Field(default=3000, ge=1, le=65535)
    public_url: str | None = Field(
        default=None, description="Base URL clients use to reach the API; defaults to http://<host>:<port>."
    )
    allow_registration: bool = True
    default_server_quota: int = Field(default=10, ge=0)
    cookie_secure: bool = Field(
        default=False,
        description="Mark the session cookie Secure even when PUBLIC_URL is not https (TLS ended in front of the "
        "API); with an https PUBLIC_URL it always is.",
    )
    webhook_max_body_bytes: int = Field(
        default=2 * 1024 * 1024, ge=1024, description="Largest webhook request body accepted (413 beyond it)."
    )

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
