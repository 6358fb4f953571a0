"""Where images come from: git sources, image builds (network isolation, base images), and the OCI
registry built images are pushed to (credentials, retries, platforms, build cache)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings


class BuildSettings(BaseSettings):
    """Git sources, image builds and the registry."""

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
    registry_auth_max_age_seconds: int = Field(default=86400, ge=1)
    registry_auth_rotate_lead_seconds: int = Field(default=3600, ge=0)
    registry_push_retries: int = Field(default=3, ge=0, le=20)
    registry_push_backoff_seconds: float = Field(default=1.0, ge=0)
    registry_push_timeout_seconds: float = Field(default=60.0, gt=0)
    registry_arch_targets: str = "linux/amd64"
    registry_build_parallelism: int = Field(default=2, ge=1, le=16)
    registry_build_cache_from: str | None = None
    registry_build_disable_cache: bool = False

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
    def arch_targets(self) -> list[str]:
        return self.registry_arch_targets.split(",")
