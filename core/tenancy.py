"""What belongs to one hosted server on a host: its sandbox uid, its `/data` directory, its image names.

Everything is keyed by the server's id, never by its slug: a slug freed by a deleted server and taken
by someone else must never lead to the first server's files, uid or images.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

UID_SPAN = 65536


def hashed_uid_slot(server_id: str | uuid.UUID) -> int:
    """The slot older installations derived from a server's id. Only the migration that recorded every
    server's slot uses it, so servers keep the uid their files already belong to; two ids can share it."""
    digest = hashlib.sha256(str(server_id).encode()).digest()
    return int.from_bytes(digest[:4], "big") % UID_SPAN


def slot_uid(slot: int, base: int) -> int:
    """The unprivileged host uid (and gid) a server's sandboxed processes and containers run as, from the
    slot recorded for it (`servers.uid_slot`, unique, never reused). Slots from UID_SPAN on skip the
    installer's uid, which follows the first span."""
    if slot < 0:
        raise ValueError("a uid slot is never negative")
    return base + slot if slot < UID_SPAN else base + slot + 1


def installer_uid(base: int) -> int:
    """The uid package installs run as: one of its own, never any server's."""
    return base + UID_SPAN


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
            previous = os.fstat(fd).st_uid
            if previous not in (uid, 0):
                # The server's uid changed (recorded uids replaced ones derived from its id): what its
                # earlier uid wrote becomes the new one's.
                _give_files(fd, previous, uid)
            os.fchown(fd, uid, uid)
    finally:
        os.close(fd)
    return path


def _give_files(dir_fd: int, previous: int, uid: int) -> None:
    """Hand every entry under `dir_fd` owned by `previous` to `uid`. The tree is the tenant's and may change
    meanwhile: it is walked by descriptor and never through a link, so nothing outside it is touched."""
    for _, dirs, files, fd in os.fwalk(".", dir_fd=dir_fd, follow_symlinks=False):
        for name in (*dirs, *files):
            try:
                if os.stat(name, dir_fd=fd, follow_symlinks=False).st_uid == previous:
                    os.chown(name, uid, uid, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue


def image_repository(server_id: str | uuid.UUID) -> str:
    """The local/registry repository of images the platform builds for a server."""
    return f"mcphost/srv-{uuid.UUID(str(server_id)).hex}"


# The namespace of what the platform itself makes: git builds (`mcphost/srv-<id>`) and package images
# (`mcphost/pkg-<key>`), tagged `localhost/mcphost/...` in the engine.
PLATFORM_NAMESPACE = "mcphost"
_SERVER_BUILD = re.compile(r"^mcphost/srv-([0-9a-f]{32})$")
# A name the engine also reads as an image id (or id prefix): it may resolve to any image on the worker.
_ENGINE_ID = re.compile(r"^(?:sha256:)?[0-9a-f]{12,64}$")
_DOCKER_HUB = ("docker.io", "index.docker.io", "registry-1.docker.io")


@dataclass(frozen=True)
class PlatformImage:
    """An image reference into the platform's own namespace. `server_id` is the server whose build it is,
    None when it names none (a shared package image, or a name the platform does not make)."""

    namespace: str
    server_id: str | None


def _split_reference(image_ref: str) -> tuple[str | None, str]:
    """(registry host[:port] or None, repository path) of a reference, the engine's way: the first component
    is a registry only when it has a dot or a port or is `localhost`."""
    name = image_ref.split("@", 1)[0]
    if name.rfind(":") > name.rfind("/"):
        name = name[: name.rfind(":")]
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first.lower() == "localhost"):
        return first.lower(), rest.lower()
    return None, name.lower()


def _host_key(host: str | None) -> tuple[str, str]:
    """A registry host as (name, port), with the names one host answers to on loopback made one."""
    if host is None or host in _DOCKER_HUB:
        return "docker.io", ""
    name, port = host, ""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest.removeprefix(":")
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    if name == "localhost":
        return "loopback", port
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return name, port
    return ("loopback" if address.is_loopback or address.is_unspecified else str(address)), port


def _same_registry(a: tuple[str, str], b: tuple[str, str]) -> bool:
    # A host named without its port is still that host: err on the side of the platform's namespace.
    return a[0] == b[0] and (a[1] == b[1] or not a[1] or not b[1])


def platform_image(image_ref: str, registry: str | None) -> PlatformImage | None:
    """Whether `image_ref` names the platform's own images: the local engine's `mcphost/...` (also written as
    a Docker Hub or `localhost/` name, which some engines resolve to the local image), or anything under
    the configured registry's namespace (`REGISTRY` host/namespace; with no namespace, its `mcphost/...`)."""
    host, path = _split_reference(image_ref.strip())
    key = _host_key(host)
    local = key in (("docker.io", ""), ("loopback", "")) and path.startswith(PLATFORM_NAMESPACE + "/")
    if local:
        found = _SERVER_BUILD.match(path)
        return PlatformImage(PLATFORM_NAMESPACE, str(uuid.UUID(found.group(1))) if found else None)
    if not registry:
        return None
    endpoint, _, namespace = registry.strip().rstrip("/").partition("/")
    namespace = namespace.strip("/").lower()
    if not _same_registry(key, _host_key(endpoint.lower())):
        return None
    # Where the platform pushes: `<namespace>/mcphost/srv-<id>`, or `mcphost/srv-<id>` with no namespace.
    own = f"{namespace}/" if namespace else f"{PLATFORM_NAMESPACE}/"
    lookalike = path.startswith(PLATFORM_NAMESPACE + "/") or f"/{PLATFORM_NAMESPACE}/" in path
    if not path.startswith(own) and not lookalike:
        return None
    found = _SERVER_BUILD.match(path[len(namespace) + 1 :] if namespace else path)
    server_id = str(uuid.UUID(found.group(1))) if found and path.startswith(own) else None
    return PlatformImage(f"{endpoint}/{own.rstrip('/')}", server_id)


def is_build_of(
    image_ref: str, registry: str | None, server_ids: tuple[str | None, ...], *, pushed: bool = False
) -> bool:
    """Whether `image_ref` is the platform's build of one of `server_ids` (`pushed`: in the configured
    registry, not the local engine's name)."""
    found = platform_image(image_ref, registry)
    if found is None or found.server_id is None or (pushed and found.namespace == PLATFORM_NAMESPACE):
        return False
    wanted = set()
    for server_id in filter(None, server_ids):
        try:
            wanted.add(str(uuid.UUID(server_id)))
        except ValueError:  # not a server id: it owns no build
            continue
    return found.server_id in wanted


def image_refusal(
    image_ref: str, registry: str | None, server_id: str | None, builder: str | None = None
) -> str | None:
    """Why a server may not run `image_ref`, or None. The platform's namespace holds other servers' builds
    (their code, and whatever their builds baked in) and is what the platform's pull credentials open,
    so a server runs an image of it only when it is its own build (or, for `builder`, the build the
    platform itself took from one of the owner's servers' records, as a promotion does)."""
    ref = image_ref.strip()
    if _ENGINE_ID.match(ref.lower()):
        return (
            f"image {ref!r} reads as an image id, which the container engine resolves to any image on the worker "
            "(other servers' builds among them): name the image by repository and tag or digest"
        )
    found = platform_image(ref, registry)
    if found is None or (found.server_id is not None and is_build_of(ref, registry, (server_id, builder))):
        return None
    return (
        f"image {ref!r} is in the platform's own image namespace ({found.namespace}/...), which holds the images "
        "it builds for servers; a server may run only its own build from it. Push your image to a registry "
        "or repository of your own"
    )


@dataclass(frozen=True)
class Resources:
    """What a server may use: cores, MiB of memory, processes, and the host's GPUs."""

    cpu: float
    memory_mib: int
    pids: int = 512
    gpu: bool = False
