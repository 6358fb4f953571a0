"""The docker runtime's pure parts: container and network names, who an image's `User` is, why a container
ended (its memory limit), what a server's container runs (`ContainerTarget`), and how the engine says an
image or a network is missing. No engine calls here.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from docker.errors import APIError

MIB = 1024 * 1024
# What a container killed with SIGKILL exits with.
SIGKILL_EXIT = 137


def container_name(deployment_id: str) -> str:
    return f"mcphost-{deployment_id}"


def network_name(server_id: str) -> str:
    """The engine network all of one server's containers share, and no other server's do."""
    return f"mcphost-srv-{uuid.UUID(server_id).hex}"


def image_uid(image_user: str | None, passwd: str | None = None) -> tuple[int, int] | None:
    """The uid and gid an image's configured `User` (name or uid, optionally `:group`) runs as: a number as
    the engine reads one (`00` is 0), a name through the image's own `/etc/passwd`. None when the name is
    not in it (the engine would fail to start it; the platform runs it as the server's uid instead)."""
    user, _, group = (image_user or "").partition(":")
    user, group = user.strip(), group.strip()
    if not user:
        return 0, 0
    entries: dict[str, tuple[int, int]] = {}
    for line in (passwd or "").splitlines():
        fields = line.split(":")
        if len(fields) >= 4 and fields[2].isdigit() and fields[3].isdigit():
            entries.setdefault(fields[0], (int(fields[2]), int(fields[3])))
    if user.isascii() and user.isdigit():
        uid = int(user)
        gid = next((g for u, g in entries.values() if u == uid), uid)
    elif user in entries:
        uid, gid = entries[user]
    elif user == "root":
        return 0, 0
    else:
        return None
    if group.isascii() and group.isdigit():
        gid = int(group)
    return uid, gid


def needs_passwd(image_user: str | None) -> bool:
    """Whether telling who an image's `User` is takes the image's own `/etc/passwd` (a name, not a number)."""
    user = (image_user or "").partition(":")[0].strip()
    return bool(user) and not (user.isascii() and user.isdigit())


def oom_detail(attrs: dict[str, Any], *, guess: bool = False) -> str | None:
    """Why an exited container ended, when its memory limit is the reason.

    `guess` also reads a SIGKILL under a memory limit as the limit's doing: some engines (podman on
    cgroup v1) never set OOMKilled, and the platform itself only kills after a stop it asked for."""
    state = attrs.get("State") or {}
    limit = int((attrs.get("HostConfig") or {}).get("Memory") or 0)
    where = f" (limit {limit // MIB} MiB)" if limit else ""
    if state.get("OOMKilled"):
        return f"out of memory{where}"
    if guess and limit and state.get("ExitCode") == SIGKILL_EXIT:
        return f"killed (SIGKILL), likely out of memory{where}"
    return None


@dataclass(frozen=True)
class ContainerTarget:
    """What a container of a server runs: an image, the port and path it serves MCP on, and (for a package
    image) the command and environment that start this server's entry point."""

    image: str
    port: int
    path: str
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    description: str = ""


def is_missing_image(exc: APIError) -> bool:
    text = str(exc).lower()
    return exc.status_code == 404 or any(
        s in text
        for s in (
            "not found",
            "manifest unknown",
            "does not exist",
            "no such image",
            "repository name not known",
            "name unknown",
            "pull access denied",
            "requested access to the resource is denied",
        )
    )


def is_missing_network(text: str) -> bool:
    # Docker answers 404, Podman 500; both name the network and say it was not found.
    text = text.lower()
    return "network" in text and ("not found" in text or "no such network" in text)
