"""Fetching git sources as hostile input: fixed transports, no hooks, no redirects, size and time limits.

Every git command runs with an empty configuration (no system or user config, no hooks), with
`GIT_ALLOW_PROTOCOL` limiting the transports submodules could use, and with the URL after `--` so
it can never be read as an option.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from core.failures import PermanentFailure, RuntimeFailure


class GitFailure(RuntimeFailure):
    kind = "git_unreachable"


class GitRejected(PermanentFailure):
    kind = "git_rejected"


def _environment(allow_insecure: bool, home: Path) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_ALLOW_PROTOCOL": "https:http:file" if allow_insecure else "https",
        "GIT_PROTOCOL_FROM_USER": "0",
        "LC_ALL": "C",
    }


def _config(allow_insecure: bool) -> list[str]:
    allowed = ("https", "http", "file") if allow_insecure else ("https",)
    options = [
        "protocol.allow=never",
        *(f"protocol.{scheme}.allow=always" for scheme in allowed),
        "http.followRedirects=false",
        "core.hooksPath=" + os.devnull,
        "submodule.recurse=false",
        "core.fsmonitor=false",
        "transfer.fsckObjects=true",
        "core.symlinks=true",
    ]
    return [arg for option in options for arg in ("-c", option)]


def _du(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


async def _git(
    args: list[str],
    *,
    allow_insecure: bool,
    timeout: float,
    cwd: Path | None = None,
    watch: Path | None = None,
    max_bytes: int | None = None,
) -> str:
    with tempfile.TemporaryDirectory(prefix="mcphost-githome-") as home:
        proc = await asyncio.create_subprocess_exec(
            "git",
            *_config(allow_insecure),
            *args,
            cwd=cwd,
            env=_environment(allow_insecure, Path(home)),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        communicate = asyncio.ensure_future(proc.communicate())
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while not communicate.done():
                await asyncio.wait({communicate}, timeout=0.5)
                if watch is not None and max_bytes is not None and not communicate.done():
                    size = await asyncio.to_thread(_du, watch)
                    if size > max_bytes:
                        raise GitRejected(
                            f"the repository is larger than the limit of {max_bytes // (1024 * 1024)} MiB "
                            "(GIT_MAX_REPO_BYTES)"
                        )
                if loop.time() > deadline and not communicate.done():
                    raise GitFailure(f"git {args[0]} did not finish within {timeout:.0f} s (GIT_CLONE_TIMEOUT_SECONDS)")
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(BaseException):
                await communicate
            raise
        out, err = communicate.result()
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip().splitlines()
        detail = "; ".join(line for line in message if line and not line.startswith("hint:"))[-600:]
        raise GitFailure(f"git {args[0]} failed: {detail or f'exit code {proc.returncode}'}")
    return out.decode(errors="replace")


async def remote_revision(url: str, branch: str | None, *, allow_insecure: bool, timeout: float) -> str:
    """The commit a branch or tag (or the default branch) points at now, without fetching anything."""
    if branch is None:
        wanted = ["HEAD"]
    else:
        wanted = [f"refs/heads/{branch}", f"refs/tags/{branch}^{{}}", f"refs/tags/{branch}"]
    out = await _git(["ls-remote", "--", url, *wanted], allow_insecure=allow_insecure, timeout=timeout)
    found = {name: sha for sha, _, name in (line.partition("\t") for line in out.splitlines())}
    for name in wanted:  # a branch first, then an annotated tag's commit, then a lightweight tag
        if name in found:
            return found[name]
    if branch:
        raise GitRejected(f"branch or tag {branch!r} does not exist in the repository")
    raise GitRejected("the repository has no commits")


@contextlib.asynccontextmanager
async def workspace(prefix: str = "mcphost-build-") -> AsyncIterator[Path]:
    """A temporary folder that is removed however the block ends."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        await asyncio.to_thread(shutil.rmtree, path, True)


async def checkout(
    url: str,
    revision: str,
    dest: Path,
    *,
    branch: str | None,
    allow_insecure: bool,
    timeout: float,
    max_bytes: int,
) -> None:
    """Shallow fetch of exactly `revision` into `dest` (an empty folder)."""
    common: dict[str, Any] = {"allow_insecure": allow_insecure, "timeout": timeout}
    await _git(["init", "-q", str(dest)], **common)
    await _git(["remote", "add", "origin", "--", url], cwd=dest, **common)
    # Fetch the branch tip (servers refuse arbitrary commits unless configured); fall back to the commit.
    wanted = branch or revision
    try:
        await _git(
            ["fetch", "-q", "--depth", "1", "--no-tags", "origin", "--", wanted],
            cwd=dest,
            watch=dest,
            max_bytes=max_bytes,
            **common,
        )
    except GitFailure:
        if wanted == revision:
            raise
        await _git(
            ["fetch", "-q", "--depth", "1", "--no-tags", "origin", "--", revision],
            cwd=dest,
            watch=dest,
            max_bytes=max_bytes,
            **common,
        )
    head = (await _git(["rev-parse", "FETCH_HEAD"], cwd=dest, **common)).strip()
    if head != revision:
        # The branch moved since it was resolved: fetch the resolved commit itself so the build matches.
        await _git(
            ["fetch", "-q", "--depth", "1", "--no-tags", "origin", "--", revision],
            cwd=dest,
            watch=dest,
            max_bytes=max_bytes,
            **common,
        )
    await _git(["checkout", "-q", "--detach", revision], cwd=dest, **common)
    size = await asyncio.to_thread(_du, dest)
    if size > max_bytes:
        raise GitRejected(
            f"the repository is larger than the limit of {max_bytes // (1024 * 1024)} MiB (GIT_MAX_REPO_BYTES)"
        )
    shutil.rmtree(dest / ".git", ignore_errors=True)


def check_context(root: Path) -> None:
    """Refuse a build context with a symlink that points outside it (or anywhere absolute)."""
    base = root.resolve()
    for current, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(current) / name
            if not path.is_symlink():
                continue
            target = os.readlink(path)
            resolved = (path.parent / target).resolve()
            if os.path.isabs(target) or not resolved.is_relative_to(base):
                rel = path.relative_to(root)
                raise GitRejected(f"symlink {rel} points outside the build context ({target}); remove it")
