"""The process runtime: MCP servers run as host processes, each in its own session.

Packages are installed once into cached environments (a venv per PyPI requirement, an npm prefix
per npm requirement). Instances are found by looking at the real processes, through environment
markers, so a launch repeated after a worker crash finds the process it already started instead
of starting a second one. Processes outlive the worker that started them.
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
import subprocess
import sys
import time
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil

from core.sources import CommandSource, ImageSource, PackageSource
from runtimes.base import (
    CommandNotFound,
    Instance,
    InstanceStatus,
    LaunchSpec,
    PackageNotFound,
    PermanentFailure,
    RuntimeFailure,
    free_loopback_port,
)

ENV_DEPLOYMENT = "MCPHOST_DEPLOYMENT_ID"
ENV_SERVER = "MCPHOST_SERVER_ID"
ENV_URL = "MCPHOST_UPSTREAM_URL"
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
    "PIP_CERT",
    "NPM_CONFIG_REGISTRY",
    "npm_config_registry",
)
_NOT_FOUND_PIP = re.compile(r"No matching distribution found|Could not find a version that satisfies")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class ProcessExecutor:
    name = "process"

    def __init__(self, state_dir: Path, *, install_timeout: float = 600.0) -> None:
        self.state_dir = state_dir
        self.envs_dir = state_dir / "envs"
        self.logs_dir = state_dir / "logs"
        self.work_dir = state_dir / "work"
        self.install_timeout = install_timeout
        for d in (self.envs_dir, self.logs_dir, self.work_dir):
            d.mkdir(parents=True, exist_ok=True)

    # ---- preparation -------------------------------------------------------------------------

    async def prepare(self, spec: LaunchSpec) -> str:
        argv = await self._resolve_argv(spec.source)
        return " ".join(argv)

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
        digest = hashlib.sha256(f"{source.registry}:{source.requirement}".encode()).hexdigest()[:12]
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", source.package)[:60]
        return self.envs_dir / source.registry / f"{safe}-{digest}"

    @asynccontextmanager
    async def _env_lock(self, env_dir: Path):  # type: ignore[no-untyped-def]
        env_dir.parent.mkdir(parents=True, exist_ok=True)
        lock_path = env_dir.with_suffix(".lock")
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_EX)
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    async def _run(self, *argv: str, cwd: Path | None = None) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=self._base_env(),
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=self.install_timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RuntimeFailure(f"{argv[0]} did not finish within {self.install_timeout:.0f}s") from None
        return proc.returncode or 0, out.decode(errors="replace")

    async def _install_pypi(self, source: PackageSource) -> str:
        env_dir = self._env_dir(source)
        marker = env_dir / ".mcphost-ready.json"
        async with self._env_lock(env_dir):
            if not marker.exists():
                shutil.rmtree(env_dir, ignore_errors=True)
                code, out = await self._run(sys.executable, "-m", "venv", str(env_dir))
                if code != 0:
                    raise RuntimeFailure(f"could not create a virtual environment: {_tail(out)}")
                code, out = await self._run(
                    str(env_dir / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--disable-pip-version-check",
                    "--no-input",
                    "-q",
                    source.requirement,
                )
                if code != 0:
                    shutil.rmtree(env_dir, ignore_errors=True)
                    if _NOT_FOUND_PIP.search(out):
                        raise PackageNotFound(
                            f"package {source.requirement!r} was not found on PyPI; check the name and version"
                        )
                    raise RuntimeFailure(f"pip install {source.requirement} failed: {_tail(out)}")
                code, out = await self._run(
                    str(env_dir / "bin" / "python"),
                    "-c",
                    "import importlib.metadata as m, json, sys; d = m.distribution(sys.argv[1]); "
                    "print(json.dumps(sorted(e.name for e in d.entry_points if e.group == 'console_scripts')))",
                    source.package,
                )
                scripts = json.loads(out.strip().splitlines()[-1]) if code == 0 else []
                marker.write_text(json.dumps({"requirement": source.requirement, "scripts": scripts}))
            scripts = json.loads(marker.read_text())["scripts"]
        wanted = source.command or self._default_script(source.package, scripts)
        exe = env_dir / "bin" / wanted
        if not exe.exists():
            raise CommandNotFound(
                f"package {source.package!r} has no console script {wanted!r}; "
                f"available: {', '.join(scripts) or 'none'} (set source.command)"
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
                shutil.rmtree(env_dir, ignore_errors=True)
                env_dir.mkdir(parents=True)
                code, out = await self._run(
                    "npm",
                    "install",
                    "--prefix",
                    str(env_dir),
                    "--no-audit",
                    "--no-fund",
                    "--omit=dev",
                    "--ignore-scripts",
                    source.requirement,
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
        if not exe.exists():
            raise CommandNotFound(f"npm package {source.package!r} has no executable {wanted!r}")
        return str(exe)

    # ---- instances ---------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k in _PASSTHROUGH_ENV}

    async def launch(self, spec: LaunchSpec) -> Instance:
        existing = [i for i in await self.instances(spec.server_id) if i.deployment_id == spec.deployment_id]
        for instance in existing:
            if (await self.status(instance)).state == "running":
                return instance
        argv = await self._resolve_argv(spec.source)
        source = spec.source
        assert not isinstance(source, ImageSource)
        port = free_loopback_port()
        if source.transport == "stdio":
            path = "/mcp"
            argv = [sys.executable, "-m", "runtimes.bridge", "--port", str(port), "--path", path, "--", *argv]
        else:
            path = source.path
        url = f"http://127.0.0.1:{port}{path}"
        env = (
            self._base_env()
            | spec.env
            | {
                "PORT": str(port),
                ENV_DEPLOYMENT: spec.deployment_id,
                ENV_SERVER: spec.server_id,
                ENV_URL: url,
            }
        )
        workdir = self.work_dir / spec.deployment_id
        workdir.mkdir(parents=True, exist_ok=True)
        log_path = self.logs_dir / f"{spec.deployment_id}.log"
        with open(log_path, "ab") as log_file:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise CommandNotFound(f"could not start {argv[0]}: {exc}") from None
        created = psutil.Process(proc.pid).create_time()
        return Instance(
            runtime=self.name,
            ref=f"{proc.pid}:{created}",
            deployment_id=spec.deployment_id,
            server_id=spec.server_id,
            url=url,
        )

    async def instances(self, server_id: str) -> list[Instance]:
        return await asyncio.to_thread(self._scan, server_id)

    def _scan(self, server_id: str) -> list[Instance]:
        found: dict[int, tuple[psutil.Process, dict[str, str]]] = {}
        for proc in psutil.process_iter(["pid", "ppid", "status"]):
            try:
                if proc.info["status"] == psutil.STATUS_ZOMBIE:
                    continue
                env = proc.environ()
            except (psutil.Error, OSError):
                continue
            if env.get(ENV_SERVER) == server_id and ENV_DEPLOYMENT in env:
                found[proc.pid] = (proc, env)
        result = []
        for pid, (proc, env) in found.items():
            if proc.info["ppid"] in found:
                continue  # a child of an instance (the bridge's stdio server), not an instance itself
            result.append(
                Instance(
                    runtime=self.name,
                    ref=f"{pid}:{proc.create_time()}",
                    deployment_id=env[ENV_DEPLOYMENT],
                    server_id=server_id,
                    url=env.get(ENV_URL, ""),
                )
            )
        return result

    @staticmethod
    def _process(instance: Instance) -> psutil.Process | None:
        pid_text, _, created = instance.ref.partition(":")
        try:
            proc = psutil.Process(int(pid_text))
            if abs(proc.create_time() - float(created)) > 0.01:
                return None  # the pid was reused by another process
            return proc
        except (psutil.Error, ValueError):
            return None

    async def status(self, instance: Instance) -> InstanceStatus:
        proc = self._process(instance)
        if proc is None:
            return InstanceStatus(state="missing")
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                code = proc.wait(timeout=0)
                return InstanceStatus(state="exited", exit_code=code)
        except psutil.Error:
            return InstanceStatus(state="missing")
        return InstanceStatus(state="running")

    async def stop(self, instance: Instance) -> None:
        proc = self._process(instance)
        if proc is None:
            return
        await asyncio.to_thread(self._terminate_group, proc)

    @staticmethod
    def _terminate_group(proc: psutil.Process, grace: float = 10.0) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        except PermissionError:
            proc.terminate()
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.Error:
                break
            time.sleep(0.05)
        else:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(timeout=2)
        except (psutil.Error, psutil.TimeoutExpired, ChildProcessError):
            pass

    async def remove(self, instance: Instance) -> None:
        await self.stop(instance)
        shutil.rmtree(self.work_dir / instance.deployment_id, ignore_errors=True)

    async def logs(self, instance: Instance, tail: int = 200) -> list[str]:
        return self.read_log(instance.deployment_id, tail)

    def read_log(self, deployment_id: str, tail: int = 200) -> list[str]:
        path = self.logs_dir / f"{deployment_id}.log"
        if not path.exists():
            return []
        with open(path, errors="replace") as fh:
            return [line.rstrip("\n") for line in deque(fh, maxlen=tail)]

    async def close(self) -> None:
        return None
