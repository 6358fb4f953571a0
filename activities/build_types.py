"""What BuildWorkflow, PushWorkflow and their activities pass to each other (the plan of a git build, one
platform's build request and image, the artifact recorded or failed, the image a deployment runs), and the
names and keys built images are found by."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, field
from typing import Any

from core.sources import GitSource
from core.tenancy import image_repository


@dataclass
class GitPlan:
    deployment_id: str
    server_id: str
    revision: str
    build_key: str
    platforms: list[str]
    parallelism: int
    registry: str | None
    artifact_id: str
    reused: bool = False
    build_timeout_seconds: float = 1800.0
    push_retries: int = 3
    push_backoff_seconds: float = 1.0
    push_timeout_seconds: float = 60.0


@dataclass
class BuildRequest:
    deployment_id: str
    artifact_id: str
    platform: str


@dataclass
class BuiltImage:
    platform: str
    image_id: str
    local_image: str
    seconds: float
    reused: bool = False
    recipe: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinishBuild:
    deployment_id: str
    artifact_id: str
    images: list[BuiltImage]


@dataclass
class FailArtifact:
    artifact_id: str
    error: str


@dataclass
class ArtifactImage:
    """What a deployment will run: the image reference and where the server listens inside it."""

    artifact_id: str
    image_ref: str
    digest: str | None
    port: int
    path: str


def build_key(source: GitSource, revision: str, platforms: list[str], registry: str | None) -> str:
    material = "\n".join(
        [
            source.repo_url,
            revision,
            source.subdirectory or "",
            ",".join(sorted(platforms)),
            registry or "",
            str(source.port or ""),
            source.path,
        ]
    )
    return hashlib.sha256(material.encode()).hexdigest()[:32]


def local_repository(server_id: str | uuid.UUID) -> str:
    return f"localhost/{image_repository(server_id)}"


def platform_suffix(platform: str) -> str:
    return platform.replace("/", "-")


def local_tag(server_id: str | uuid.UUID, revision: str, platform: str) -> str:
    return f"{local_repository(server_id)}:{revision[:12]}-{platform_suffix(platform)}"
