"""What the image of a PyPI package source holds on the docker runtime, and how a server runs from it: the
contract between `builds.package_images`, which builds such images, and `runtimes.docker`, which runs them.

The image holds two environments: the package in /opt/venv, and the stdio bridge (the platform's
`runtimes/bridge.py`) in /opt/mcphost/venv, so neither side's dependencies constrain the other's. Its build
records the package's console scripts in /opt/mcphost/entry-points.json; a server runs only one of them.
"""

from __future__ import annotations

import re

from core.failures import CommandNotFound
from core.sources import PackageSource

CONTAINER_PORT = 8080
# Set on every package image to its key (what it is made of): an image under the tag with another key is stale.
LABEL_PACKAGE_BUILD = "io.mcphost.package-build"
VENV = "/opt/venv"
BRIDGE_HOME = "/opt/mcphost"
BRIDGE_PYTHON = f"{BRIDGE_HOME}/venv/bin/python"
BRIDGE_SCRIPT = f"{BRIDGE_HOME}/bridge.py"
ENTRY_POINTS_FILE = f"{BRIDGE_HOME}/entry-points.json"


def choose_script(source: PackageSource, scripts: list[str]) -> str:
    """The console script a server runs: the one it names, else the one named after its package, else the
    only one. Anything the package does not declare fails, listing what it does."""
    wanted = source.command
    if wanted is None:
        normalized = re.sub(r"[-_.]+", "-", source.package).lower()
        named = [s for s in scripts if re.sub(r"[-_.]+", "-", s).lower() == normalized]
        if named:
            wanted = named[0]
        elif len(scripts) == 1:
            wanted = scripts[0]
        else:
            raise CommandNotFound(
                f"package {source.package!r} has {len(scripts)} console scripts ({', '.join(scripts) or 'none'}); "
                "set source.command to the one that starts the MCP server"
            )
    if wanted not in scripts:
        raise CommandNotFound(
            f"package {source.package!r} declares no console script {wanted!r}; its entry points: "
            f"{', '.join(scripts) or 'none'} (set source.command to one of them)"
        )
    return wanted


def container_command(source: PackageSource, script: str) -> tuple[list[str], dict[str, str]]:
    """What a container of the image runs for this server, and the environment that adds."""
    server = [f"{VENV}/bin/{script}", *source.args]
    if source.transport == "http":
        return server, {"HOST": "0.0.0.0"}
    bridge = [BRIDGE_PYTHON, BRIDGE_SCRIPT, "--host", "0.0.0.0", "--port", str(CONTAINER_PORT)]
    return [*bridge, "--path", source.path, "--report-oom", "--", *server], {}
