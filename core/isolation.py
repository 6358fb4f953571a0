"""How strongly a container server is kept from the host's kernel: on the engine's default runtime
(`engine`: namespaces, no capabilities, the engine's seccomp profile) or under gVisor (`gvisor`: a
user-space kernel of its own between the server and the host's).

CONTAINER_ISOLATION is the installation's level for container servers; a server may name its own.
Only administrators' servers may weaken it: anyone else's get the stronger of the two, so a server
stored with `engine` still runs under gVisor once the installation asks for it.
"""

from __future__ import annotations

from typing import Literal

Isolation = Literal["engine", "gvisor"]
ISOLATIONS: tuple[Isolation, ...] = ("engine", "gvisor")


def effective_isolation(requested: str | None, default: Isolation, *, admin: bool) -> Isolation:
    """What a server of this owner runs under: its own choice (None: the installation's), never below the
    installation's unless its owner is an administrator."""
    if requested not in ISOLATIONS:
        return default
    chosen: Isolation = "gvisor" if requested == "gvisor" else "engine"
    if admin or default == "engine":
        return chosen
    return "gvisor"


def isolation_refusal(requested: str | None, runtime: str) -> str | None:
    """Why a server asking for `requested` cannot run on `runtime`, or None. Only the docker runtime
    gives gVisor: elsewhere the choice would be ignored, which is worse than refusing it."""
    if requested != "gvisor" or runtime == "docker":
        return None
    if runtime == "process":
        return 'gVisor isolation is offered for container servers; choose the docker runtime ("runtime": "docker")'
    return (
        f"gVisor isolation is offered for container servers on the docker runtime, not on the {runtime} "
        'runtime; choose the docker runtime ("runtime": "docker") or leave "isolation" unset'
    )


def weakening_refusal(requested: str | None, default: Isolation, *, admin: bool) -> str | None:
    """Why this owner may not ask for `requested`, or None: below the installation's level is for
    administrators only."""
    if admin or requested is None or effective_isolation(requested, default, admin=False) == requested:
        return None
    return (
        f"isolation {requested!r} is weaker than this installation's CONTAINER_ISOLATION={default}; only "
        'administrators may run a server below it (leave "isolation" unset)'
    )
