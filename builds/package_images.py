"""PyPI package sources on the docker runtime: one image per requirement, built from PACKAGE_PYTHON_IMAGE and
laid out as `core.package_image` says. The docker runtime finds and runs these images; the worker gives it a
`PackageImageBuilder` to build the ones it lacks (`runtimes.base.PackageImages`).

The package's wheels are fetched on the worker with `pip download --only-binary=:all:` for the image's
Python (BUILD_PYTHON_VERSION) and platform, so nothing of the package runs on the worker, and installed
offline in the image, so containers need no package index. The stdio bridge goes in with the `mcp` and
`uvicorn` versions the platform runs it with. The package's console scripts are listed by an interpreter
that never imports the package's environment.

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
import shutil
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from builds.images import BuildFailed, ImageBuilder
from builds.images import host_arch as engine_arch
from builds.wheels import PIP_ARCH, platform_tags
from core.failures import PackageNotFound, PermanentFailure, RuntimeFailure
from core.package_image import (
    BRIDGE_HOME,
    BRIDGE_PYTHON,
    BRIDGE_SCRIPT,
    CONTAINER_PORT,
    ENTRY_POINTS_FILE,
    LABEL_PACKAGE_BUILD,
    VENV,
)
from core.settings import Settings, child_environment
from core.sources import PackageSource

# Part of every image's key: raise it when what an image holds or how it is laid out changes.
RECIPE_VERSION = 1
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
    # The stdio bridge's source, copied into every image: the one the runtime runs (runtimes.base.BRIDGE_SOURCE).
    bridge: Path
    base_image: str = "python:3.11-slim-bookworm"
    python_version: str = "3.11"
    allow_sdist: bool = False
    find_links: tuple[str, ...] = ()
    download_timeout: float = 600.0
    build_timeout: float = 1800.0
    # RUN steps on a build network of their own that reaches the internet, never the build host
    # (BUILD_NETWORK_ISOLATION, as for git builds): a source build runs the package's own code.
    isolated: bool = False


def package_image_config(settings: Settings, bridge: Path) -> PackageImageConfig:
    """The worker's: PACKAGE_* and BUILD_* settings, with the bridge the docker runtime runs."""
    return PackageImageConfig(
        bridge=bridge,
        base_image=settings.package_python_image,
        python_version=settings.build_python_version,
        allow_sdist=settings.package_allow_sdist,
        find_links=tuple((settings.package_find_links or "").split()),
        download_timeout=settings.package_install_timeout_seconds,
        build_timeout=settings.build_timeout_seconds,
        isolated=settings.build_network_isolation == "required",
    )


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
        "bridge_source": hashlib.sha256(config.bridge.read_bytes()).hexdigest(),
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
        f"COPY bridge.py {BRIDGE_SCRIPT}\n"
        f"RUN {' && '.join(steps)}\n"
        f"ENV PATH={IMAGE_PATH} PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1\n"
        "WORKDIR /tmp\n"
        f"EXPOSE {CONTAINER_PORT}\n"
    )


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
    (context / "bridge.py").write_bytes(config.bridge.read_bytes())
    (context / "Dockerfile").write_text(dockerfile(config.base_image, source, from_index=from_index))
    return from_index


class PackageBuildFailed(PermanentFailure):
    kind = "build_failed"


class PackageImageBuilder:
    """Builds the images of package sources for the docker runtime (its `runtimes.base.PackageImages`), through
    the builder git builds use, on the engine the runtime runs them on."""

    def __init__(self, config: PackageImageConfig, engine: ImageBuilder) -> None:
        self.config = config
        self.engine = engine

    def name(self, source: PackageSource) -> tuple[str, str]:
        key = image_key(source, self.config)
        return key, image_tag(key)

    async def build(self, source: PackageSource, key: str, tag: str) -> str:
        context = Path(tempfile.mkdtemp(prefix="mcphost-package-"))
        try:
            from_index = await prepare_context(context, source, self.config)
            return await self._build(context, tag, key, from_index)
        finally:
            await asyncio.to_thread(shutil.rmtree, context, True)

    async def _build(self, context: Path, tag: str, key: str, from_index: bool) -> str:
        """Installing fetched wheels runs no package code and needs no network, so RUN steps get none; a
        source build from the index (PACKAGE_ALLOW_SDIST) runs the package's setup code, so it gets the
        isolated build network where one is required, and is refused where this engine cannot give one."""
        tail: list[str] = []

        def on_line(line: str) -> None:
            tail.append(line)
            del tail[:-40]

        stop = threading.Event()
        isolated = self.config.isolated and from_index
        if isolated:
            problem = await self.engine.isolation_problem()
            if problem:
                raise PackageBuildFailed(
                    "this package has no wheels, and building it from source runs its setup code on a network that "
                    f"reaches the internet but not the build host, which {problem}. Set BUILD_NETWORK_ISOLATION=off "
                    "only where every tenant is trusted"
                )
        try:
            return await asyncio.wait_for(
                self.engine.build(
                    context,
                    "Dockerfile",
                    tag=tag,
                    platform=f"linux/{engine_arch()}",
                    labels={LABEL_PACKAGE_BUILD: key},
                    cache_from=[],
                    nocache=False,
                    on_line=on_line,
                    stop=stop,
                    isolated=isolated,
                    offline=not from_index,
                ),
                self.config.build_timeout,
            )
        except TimeoutError:
            raise RuntimeFailure(
                f"building {tag} took longer than {self.config.build_timeout:.0f}s (BUILD_TIMEOUT_SECONDS)"
            ) from None
        except BuildFailed as exc:
            output = "\n".join(tail[-10:])
            raise PackageBuildFailed(
                f"building the package image from {self.config.base_image} (PACKAGE_PYTHON_IMAGE) failed: "
                f"{exc.message}\n{output}"
            ) from None
        finally:
            stop.set()
