"""Python dependencies of a generated image, fetched on the worker as binary wheels for the target
platform and installed offline in the image: builds work where containers cannot reach a package
index, and no code from the repository runs on the worker (`--only-binary=:all:` builds nothing)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from pathlib import Path

from builds.recipes import RecipeError
from core.failures import RuntimeFailure
from core.settings import child_environment

PIP_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "386": "i686", "ppc64le": "ppc64le", "s390x": "s390x"}


def platform_tags(arch: str) -> list[str]:
    """pip --platform options for glibc-based images: every manylinux level up to Debian bookworm's glibc 2.36."""
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(36, 16, -1)]
    tags += [f"manylinux2014_{arch}", f"linux_{arch}"]
    return [arg for tag in tags for arg in ("--platform", tag)]


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await proc.wait()


async def fetch(dest: Path, requirements: list[str], *, platform: str, python_version: str, timeout: float) -> None:
    arch = platform.split("/")[1]
    dest.mkdir(exist_ok=True)
    args = [
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--only-binary=:all:", "--dest", str(dest),
        "--python-version", python_version, "--implementation", "cp",
        *platform_tags(PIP_ARCH.get(arch, arch)),
        *requirements,
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_environment()
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout=timeout)
    except TimeoutError:
        await _kill(proc)
        raise RuntimeFailure("fetching Python dependencies timed out (PACKAGE_INSTALL_TIMEOUT_SECONDS)") from None
    except BaseException:
        await asyncio.shield(_kill(proc))  # cancelled: pip must stop writing into the workspace first
        raise
    if proc.returncode != 0:
        detail = [line for line in err.decode(errors="replace").strip().splitlines() if "WARNING" not in line]
        raise RecipeError(
            f"could not fetch the Python dependencies as wheels for {platform}: {' '.join(detail[-3:])[:600]}"
        )
