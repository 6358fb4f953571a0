"""What belongs to one hosted server on a host: its sandbox uid, its `/data` directory, its image names.

Everything is keyed by the server's id, never by its slug: a slug freed by a deleted server and taken
by someone else must never lead to the first server's files, uid or images.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

UID_SPAN = 65536


def server_uid(server_id: str | uuid.UUID, base: int) -> int:
    """The unprivileged host uid (and gid) a server's sandboxed processes and containers run as."""
    digest = hashlib.sha256(str(server_id).encode()).digest()
    return base + int.from_bytes(digest[:4], "big") % UID_SPAN


def data_root(state_dir: Path) -> Path:
    return state_dir / "data"


def server_data_dir(state_dir: Path, server_id: str | uuid.UUID) -> Path:
    """The host directory mounted read-write at `/data` in the server, on every runtime."""
    return data_root(state_dir) / str(uuid.UUID(str(server_id)))


def prepare_data_dir(path: Path, uid: int | None) -> Path:
    """Make the server's `/data` on the host, usable only by its uid (when the platform runs as root, which
    can give it away) and the platform: mode 0700. Every runtime and the files API go through this."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o700)
        if uid is not None and os.geteuid() == 0:
            os.fchown(fd, uid, uid)
    finally:
        os.close(fd)
    return path


def image_repository(server_id: str | uuid.UUID) -> str:
    """The local/registry repository of images the platform builds for a server."""
    return f"mcphost/srv-{uuid.UUID(str(server_id)).hex}"


@dataclass(frozen=True)
class Resources:
    """What a server may use: cores, MiB of memory, processes, and the host's GPUs."""

    cpu: float
    memory_mib: int
    pids: int = 512
    gpu: bool = False
