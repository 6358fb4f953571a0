"""The process runtime's package installs: PyPI requirements into a cached venv each, npm requirements into
a cached prefix each, made by an installer that runs (where the host can sandbox) in the sandbox as a uid
of its own, binary wheels only and no npm install scripts unless PACKAGE_ALLOW_SDIST is set; and the
resolution of a source to the command line that starts it (an entry point its package declares).

`PackageInstaller` is the half of `runtimes.process.ProcessExecutor` that does this; an installer a killed
worker left running is found by its record beside the environment and stopped before the next attempt.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import time
import uuid
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil

from core.failures import CommandNotFound, PackageNotFound, PermanentFailure, RuntimeFailure
from core.sources import CommandSource, ImageSource, PackageSource
from runtimes import sandbox_limits, sandbox_plan
from runtimes.sandbox import SandboxSupport

# What installers and server processes inherit from the worker: locale, the host's trust store and proxies
# (without them TLS through an intercepting proxy fails, and npm retries for minutes), and package index
# settings. Everything else a server gets comes from its own config env.
_PASSTHROUGH_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TZ",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
    "PIP_TRUSTED_HOST",
    "PIP_CERT",
    "NPM_CONFIG_REGISTRY",
    "npm_config_registry",
)
_NOT_FOUND_PIP = re.compile(r"No matching distribution found|Could not find a version that satisfies")
# How the platform runs its own Python helpers (bridge, sandbox launcher): isolated mode ignores PYTHON*
# variables, the user site directory and the working directory.
ISOLATED_PYTHON = (sys.executable, "-I")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class PackageInstaller:
    """Installs package sources and resolves every source to its command line. Mixed into `ProcessExecutor`,
    which sets the attributes below."""

    envs_dir: Path
    plans_dir: Path
    install_timeout: float
    installer_uid: int
    allow_sdist: bool
    find_links: str | None
    hidden: tuple[str, ...]
    seccomp_program: str | None
    support: SandboxSupport | None

    @property
    def sandboxed(self) -> bool:
        """Whether installs and servers run sandboxed on this host."""
        return self.support is not None and self.support.ok

    def _base_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k in _PASSTHROUGH_ENV}

    async def _resolve_argv(self, source: Any) -> list[str]:
        if isinstance(source, ImageSource):
            raise PermanentFailure("the process runtime cannot run image sources; use the docker runtime")
        if isinstance(source, CommandSource):
            path = shutil.which(source.command)
            if path is None:
                raise CommandNotFound(f"command {source.command!r} was not found on the worker host")
            return [path, *source.args]
        assert isinstance(source, PackageSource)
        if source.registry == "pypi":
            exe = await self._install_pypi(source)
        else:
            exe = await self._install_npm(source)
        return [exe, *source.args]

    def _env_dir(self, source: PackageSource) -> Path:
        # Environments made with source builds / install scripts allowed are kept apart from wheel-only ones.
        key = f"{source.registry}:{source.requirement}:{'sdist' if self.allow_sdist else 'binary'}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", source.package)[:60]
        return self.envs_dir / source.registry / f"{safe}-{digest}"

    @asynccontextmanager
    async def _env_lock(self, env_dir: Path):  # type: ignore[no-untyped-def]
        env_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_path = env_dir.with_suffix(".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            await self._stop_leftover_installer(env_dir)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    async def _run(self, *argv: str, cwd: Path | None = None) -> tuple[int, str]:
        """Run an install step; in the sandbox (as the installer uid, writing only `cwd`) when there is one."""
        env = self._base_env()
        if self.find_links:
            env["PIP_FIND_LINKS"] = " ".join(filter(None, [self.find_links, env.get("PIP_FIND_LINKS")]))
        command = list(argv)
        if self.sandboxed and cwd is not None:
            env["HOME"] = sandbox_plan.HOME
            env["TMPDIR"] = "/tmp"
            # Named per run: installs of the same package by workers of other state directories may overlap.
            install_id = f"install-{cwd.name}-{uuid.uuid4().hex[:8]}"
            plan = sandbox_plan.SandboxPlan(
                uid=self.installer_uid,
                argv=command,
                cgroup=install_id,
                ro_binds=[[p, p] for p in sandbox_plan.exposed_paths(env, self.hidden)],
                rw_binds=[[str(cwd), str(cwd)]],
                hidden=list(self.hidden),
                chdir=str(cwd),
                pids=1024,
                seccomp_program=self.seccomp_program,
            )
            plan_path = self.plans_dir / f"{install_id}.json"
            plan.write(plan_path)
            command = [*ISOLATED_PYTHON, "-m", "runtimes.sandbox", "--plan", str(plan_path)]
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        # Named where the next attempt looks: a worker killed mid-install cannot kill its installer, which
        # lives on in a session of its own; whoever takes the environment's lock next stops it first.
        installer = _installer_record(cwd) if cwd is not None else None
        if installer is not None:
            _write_installer(installer, proc.pid, install_id if self.sandboxed else None)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=self.install_timeout)
        except TimeoutError:
            await self._kill(proc)
            raise RuntimeFailure(f"{argv[0]} did not finish within {self.install_timeout:.0f}s") from None
        except asyncio.CancelledError:
            # A cancelled install must not keep running beside the next attempt.
            await self._kill(proc)
            raise
        finally:
            if installer is not None and proc.returncode is not None:
                installer.unlink(missing_ok=True)
        if self.sandboxed and cwd is not None:
            await asyncio.to_thread(sandbox_limits.remove_cgroup, install_id)
            plan_path.unlink(missing_ok=True)
        return proc.returncode or 0, out.decode(errors="replace")

    @staticmethod
    async def _kill(proc: asyncio.subprocess.Process) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        await proc.wait()

    async def _stop_leftover_installer(self, env_dir: Path) -> None:
        """Stop an installer an earlier attempt left running (its worker was killed), with everything in
        its process group, before this attempt touches the environment. Called holding the lock."""
        record = _installer_record(env_dir)
        try:
            data = json.loads(record.read_text())
            pid, started = int(data["pid"]), float(data["started"])
        except (OSError, ValueError, KeyError, TypeError):
            record.unlink(missing_ok=True)
            return
        await asyncio.to_thread(_kill_group, pid, started)
        if data.get("cgroup"):
            await asyncio.to_thread(sandbox_limits.remove_cgroup, str(data["cgroup"]))
        record.unlink(missing_ok=True)

    def _own_env_dir(self, env_dir: Path) -> None:
        """A fresh environment directory the sandboxed installer (and nobody else) may write."""
        shutil.rmtree(env_dir, ignore_errors=True)
        env_dir.mkdir(parents=True)
        if self.sandboxed:
            os.chown(env_dir, self.installer_uid, self.installer_uid)
        else:
            os.chmod(env_dir, 0o755)

    async def _install_pypi(self, source: PackageSource) -> str:
        env_dir = self._env_dir(source)
        marker = env_dir / ".mcphost-ready.json"
        async with self._env_lock(env_dir):
            if not marker.exists():
                self._own_env_dir(env_dir)
                code, out = await self._run(os.path.realpath(sys.executable), "-m", "venv", str(env_dir), cwd=env_dir)
                if code != 0:
                    raise RuntimeFailure(f"could not create a virtual environment: {_tail(out)}")
                binary = [] if self.allow_sdist else ["--only-binary=:all:"]
                code, out = await self._run(
                    str(env_dir / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "--no-cache-dir",
                    "-q",
                    *binary,
                    source.requirement,
                    cwd=env_dir,
                )
                if code != 0:
                    shutil.rmtree(env_dir, ignore_errors=True)
                    if _NOT_FOUND_PIP.search(out):
                        hint = "" if self.allow_sdist else " as a binary wheel (source builds need PACKAGE_ALLOW_SDIST)"
                        raise PackageNotFound(
                            f"package {source.requirement!r} was not found on PyPI{hint}; check the name and version"
                        )
                    raise RuntimeFailure(f"pip install {source.requirement} failed: {_tail(out)}")
                code, out = await self._run(
                    str(env_dir / "bin" / "python"),
                    "-c",
                    "import importlib.metadata as m, json, sys; d = m.distribution(sys.argv[1]); "
                    "print(json.dumps(sorted(e.name for e in d.entry_points if e.group == 'console_scripts')))",
                    source.package,
                    cwd=env_dir,
                )
                try:
                    scripts = json.loads(out.strip().splitlines()[-1]) if code == 0 else None
                except (ValueError, IndexError):
                    scripts = None
                if scripts is None:
                    shutil.rmtree(env_dir, ignore_errors=True)
                    raise RuntimeFailure(f"could not read the entry points of {source.requirement}: {_tail(out)}")
                marker.write_text(json.dumps({"requirement": source.requirement, "scripts": scripts}))
            scripts = json.loads(marker.read_text())["scripts"]
        wanted = source.command or self._default_script(source.package, scripts)
        exe = env_dir / "bin" / wanted
        if wanted not in scripts or not exe.exists():
            raise CommandNotFound(
                f"package {source.package!r} declares no console script {wanted!r}; its entry points: "
                f"{', '.join(scripts) or 'none'} (set source.command to one of them)"
            )
        return str(exe)

    @staticmethod
    def _default_script(package: str, scripts: list[str]) -> str:
        normalized = re.sub(r"[-_.]+", "-", package).lower()
        for script in scripts:
            if re.sub(r"[-_.]+", "-", script).lower() == normalized:
                return script
        if len(scripts) == 1:
            return scripts[0]
        raise CommandNotFound(
            f"package {package!r} has {len(scripts)} console scripts ({', '.join(scripts) or 'none'}); "
            "set source.command to the one that starts the MCP server"
        )

    async def _install_npm(self, source: PackageSource) -> str:
        if shutil.which("npm") is None:
            raise PermanentFailure("npm is not installed on the worker host; npm packages need Node.js and npm")
        env_dir = self._env_dir(source)
        marker = env_dir / ".mcphost-ready.json"
        async with self._env_lock(env_dir):
            if not marker.exists():
                self._own_env_dir(env_dir)
                scripts_flag = [] if self.allow_sdist else ["--ignore-scripts"]
                code, out = await self._run(
                    os.path.realpath(shutil.which("npm") or "npm"),
                    "install",
                    "--prefix",
                    str(env_dir),
                    "--no-audit",
                    "--no-fund",
                    "--no-update-notifier",
                    "--omit=dev",
                    *scripts_flag,
                    source.requirement,
                    cwd=env_dir,
                )
                if code != 0:
                    shutil.rmtree(env_dir, ignore_errors=True)
                    if "E404" in out or "ETARGET" in out:
                        raise PackageNotFound(
                            f"package {source.requirement!r} was not found on npm; check the name and version"
                        )
                    raise RuntimeFailure(f"npm install {source.requirement} failed: {_tail(out)}")
                manifest = json.loads((env_dir / "node_modules" / source.package / "package.json").read_text())
                bins = manifest.get("bin") or {}
                if isinstance(bins, str):
                    bins = {source.package.split("/")[-1]: bins}
                marker.write_text(json.dumps({"requirement": source.requirement, "scripts": sorted(bins)}))
            scripts = json.loads(marker.read_text())["scripts"]
        wanted = source.command or self._default_script(source.package.split("/")[-1], scripts)
        exe = env_dir / "node_modules" / ".bin" / wanted
        if wanted not in scripts or not exe.exists():
            raise CommandNotFound(
                f"npm package {source.package!r} declares no executable {wanted!r}; its bin entries: "
                f"{', '.join(scripts) or 'none'} (set source.command to one of them)"
            )
        return str(exe)


def _installer_record(env_dir: Path) -> Path:
    return env_dir.with_suffix(".installer")


def _write_installer(record: Path, pid: int, cgroup: str | None) -> None:
    """Name a running installer: its pid with its start time (so a reused pid is never mistaken for it)."""
    try:
        started = psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return  # already gone
    tmp = record.with_suffix(".installer-tmp")
    tmp.write_text(json.dumps({"pid": pid, "started": started, "cgroup": cgroup}))
    os.chmod(tmp, 0o600)
    tmp.replace(record)


def _kill_group(pid: int, started: float, wait: float = 10.0) -> None:
    """SIGKILL the process group led by `pid` if that process is still the one recorded, and wait until
    every member is gone."""
    try:
        leader = psutil.Process(pid)
        if abs(leader.create_time() - started) > 0.01:
            return  # the pid now belongs to someone else; the installer is long gone
    except psutil.NoSuchProcess:
        return
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + wait
    while members and time.monotonic() < deadline:
        members = [m for m in members if _alive(m)]
        if members:
            time.sleep(0.02)


def _alive(proc: psutil.Process) -> bool:
    """Still running: a killed process whose parent has not reaped it yet is a zombie, which runs nothing."""
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
