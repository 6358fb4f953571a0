"""PyPI package sources on the docker runtime: one image per requirement, built from PACKAGE_PYTHON_IMAGE.

The package's wheels are fetched on the worker with `pip download --only-binary=:all:` for the image's
Python (BUILD_PYTHON_VERSION) and platform, so nothing of the package runs on the worker, and installed
offline in the image, so containers need no package index. The image holds two environments: the
package in /opt/venv, and the stdio bridge (this platform's `runtimes/bridge.py`, with the `mcp` and
`uvicorn` versions the platform runs it with) in /opt/mcphost/venv, so neither side's dependencies
constrain the other's. The build records the package's console scripts in /opt/mcphost/entry-points.json,
read by an interpreter that never imports the package's environment; a server runs only one of them.

With PACKAGE_ALLOW_SDIST a requirement without a complete set of wheels is installed from the index
inside the image build instead: its source build runs in the engine's build container, never on the
worker (those builds must then reach the index). Wheels are still tried first, as source builds
cannot be fetched for another Python than the worker's own, and preparing one runs its code.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import signal
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from builds.images import host_arch as engine_arch
from builds.wheels import PIP_ARCH, platform_tags
from core.failures import CommandNotFound, PackageNotFound, RuntimeFailure
from core.settings import child_environment
from core.sources import PackageSource

# Part of every image's key: raise it when what an image holds or how it is laid out changes.
RECIPE_VERSION = 1
CONTAINER_PORT = 8080
LABEL_PACKAGE_BUILD = "io.mcphost.package-build"
VENV = "/opt/venv"
BRIDGE_HOME = "/opt/mcphost"
BRIDGE_PYTHON = f"{BRIDGE_HOME}/venv/bin/python"
ENTRY_POINTS_FILE = f"{BRIDGE_HOME}/entry-points.json"
BRIDGE_SOURCE = Path(__file__).with_name("bridge.py")
# The image's own PATH is not relied on: a base image made by `import` has none.
IMAGE_PATH = f"{VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_NOT_FOUND = re.compile(r"No matching distribution found|Could not find a version that satisfies")

# Run at build time by the bridge's interpreter, isolated (-I): the package's environment is only read as
# data, so no `.pth` file of the package runs and nothing it ships can change the answer.
ENTRY_POINTS_SCRIPT = """\
import glob, importlib.metadata as md, json, re, sys

def norm(name):
    return re.sub(r"[-_.]+", "-", name or "").lower()

paths = glob.glob(sys.argv[1] + "/lib/python3*/site-packages")
for dist in md.distributions(path=paths):
    if norm(dist.metadata["Name"]) == norm(sys.argv[2]):
        scripts = sorted({e.name for e in dist.entry_points if e.group == "console_scripts"})
        break
else:
    sys.exit(f"{sys.argv[2]} is not installed in {sys.argv[1]}")
with open(sys.argv[3], "w") as fh:
    json.dump(scripts, fh)
"""


@dataclass(frozen=True)
class PackageImageConfig:
    base_image: str = "python:3.11-slim-bookworm"
    python_version: str = "3.11"
    allow_sdist: bool = False
    find_links: tuple[str, ...] = ()
    download_timeout: float = 600.0
    build_timeout: float = 1800.0
    bridge_max_sessions: int = 32
    bridge_idle_seconds: float = 600.0
    # RUN steps on a build network of their own that reaches the internet, never the build host
    # (BUILD_NETWORK_ISOLATION, as for git builds): a source build runs the package's own code.
    isolated: bool = False


def bridge_requirements() -> list[str]:
    """The bridge runs in images with the library versions it was written and tested against."""
    return [f"mcp=={version('mcp')}", f"uvicorn=={version('uvicorn')}"]


def image_key(source: PackageSource, config: PackageImageConfig) -> str:
    material = {
        "recipe": RECIPE_VERSION,
        "requirement": source.requirement,
        "allow_sdist": config.allow_sdist,
        "base": config.base_image,
        "python": config.python_version,
        "bridge": bridge_requirements(),
        "bridge_source": hashlib.sha256(BRIDGE_SOURCE.read_bytes()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()


def image_tag(key: str) -> str:
    return f"localhost/mcphost/pkg-{key[:16]}:{RECIPE_VERSION}"


def dockerfile(base_image: str, source: PackageSource, *, from_index: bool) -> str:
    pip = "pip install --no-cache-dir --disable-pip-version-check --no-input"
    package_pip = f"{VENV}/bin/{pip}" + ("" if from_index else " --no-index")
    steps = [
        f"python3 -m venv {BRIDGE_HOME}/venv",
        f"{BRIDGE_HOME}/venv/bin/{pip} -q --no-index --find-links /wheels/bridge "
        + " ".join(shlex.quote(r) for r in bridge_requirements()),
        f"python3 -m venv {VENV}",
        f"{package_pip} --find-links /wheels/package {shlex.quote(source.requirement)}",
        f"{BRIDGE_PYTHON} -I /wheels/entry_points.py {VENV} {shlex.quote(source.package)} {ENTRY_POINTS_FILE}",
        "rm -rf /wheels",
    ]
    return (
        f"FROM {base_image}\n"
        "COPY wheels /wheels\n"
        f"COPY bridge.py {BRIDGE_HOME}/bridge.py\n"
        f"RUN {' && '.join(steps)}\n"
        f"ENV PATH={IMAGE_PATH} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1\n"
        "WORKDIR /tmp\n"
        f"EXPOSE {CONTAINER_PORT}\n"
    )


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
    bridge = [BRIDGE_PYTHON, f"{BRIDGE_HOME}/bridge.py", "--host", "0.0.0.0", "--port", str(CONTAINER_PORT)]
    return [*bridge, "--path", source.path, "--report-oom", "--", *server], {}


def host_arch() -> str:
    """pip's name for the architecture of the engine's images, which run on the worker's host."""
    arch = engine_arch()
    return PIP_ARCH.get(arch, arch)


async def download(dest: Path, requirements: list[str], config: PackageImageConfig) -> tuple[bool, str]:
    """Fetch `requirements` and their dependencies as wheels for the image; (done, pip's complaint)."""
    dest.mkdir(parents=True, exist_ok=True)
    find_links = [arg for link in config.find_links for arg in ("--find-links", link)]
    args = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-input",
        "--only-binary=:all:", "--dest", str(dest),
        "--python-version", config.python_version, "--implementation", "cp", *platform_tags(host_arch()),
        *find_links, *requirements,
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=child_environment(),
        start_new_session=True,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=config.download_timeout)
    except (TimeoutError, asyncio.CancelledError) as exc:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        if isinstance(exc, TimeoutError):
            raise RuntimeFailure(
                f"fetching the wheels of {' '.join(requirements)} took longer than "
                f"{config.download_timeout:.0f}s (PACKAGE_INSTALL_TIMEOUT_SECONDS)"
            ) from None
        raise
    lines = [line for line in err.decode(errors="replace").splitlines() if line.strip() and "WARNING" not in line]
    return proc.returncode == 0, "\n".join(lines[-5:])[:1500]


async def prepare_context(context: Path, source: PackageSource, config: PackageImageConfig) -> bool:
    """Fill a build context for the package's image; returns whether its build needs the package index."""
    wheels = context / "wheels"
    fetched, complaint = await download(wheels / "package", [source.requirement], config)
    from_index = False
    if not fetched:
        where = f"Python {config.python_version} on linux/{engine_arch()}"
        if _NOT_FOUND.search(complaint) and config.allow_sdist:
            from_index = True
        elif _NOT_FOUND.search(complaint):
            raise PackageNotFound(
                f"package {source.requirement!r} was not found on PyPI as binary wheels for {where} (source "
                f"builds need PACKAGE_ALLOW_SDIST); check the name and version: {complaint}"
            )
        else:
            raise RuntimeFailure(f"fetching the wheels of {source.requirement} failed: {complaint}")
    fetched, complaint = await download(wheels / "bridge", bridge_requirements(), config)
    if not fetched:
        raise RuntimeFailure(f"fetching the stdio bridge's wheels failed: {complaint}")
    (wheels / "package").mkdir(parents=True, exist_ok=True)
    (wheels / "entry_points.py").write_text(ENTRY_POINTS_SCRIPT)
    (context / "bridge.py").write_bytes(BRIDGE_SOURCE.read_bytes())
    (context / "Dockerfile").write_text(dockerfile(config.base_image, source, from_index=from_index))
    return from_index
