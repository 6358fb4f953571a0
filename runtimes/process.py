"""The process runtime: MCP servers run as host processes, each in its own session and, unless the
installation turned it off, in its own sandbox (`runtimes.sandbox`).

Packages are installed once into cached environments (a venv per PyPI requirement, an npm prefix per
npm requirement), by a sandboxed installer that runs as a uid of its own: servers get their environment
read-only and can never write into it. Installs take binary wheels only and skip npm install scripts
unless PACKAGE_ALLOW_SDIST is set. A server's command must be an entry point its package declares.

Each instance is recorded in a file of the platform's own (pid, start time, URL), so a launch repeated
after a worker crash finds the process it already started instead of starting a second one, and no
process a hosted server starts can pass itself off as another server's instance. Processes outlive the
worker that started them.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import psutil

from core.failures import CommandNotFound, PackageNotFound, PermanentFailure, RuntimeFailure
from core.sources import CommandSource, ImageSource, PackageSource
from core.tenancy import prepare_data_dir
from runtimes import sandbox, sandbox_limits, sandbox_plan
from runtimes.base import BRIDGE_PATH_ENV, Instance, InstanceStatus, LaunchSpec, free_loopback_port

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
SANDBOX_PORT = 8000  # where an HTTP server listens inside its own network namespace
# How the platform runs its own Python helpers (bridge, sandbox launcher): isolated mode ignores PYTHON*
# variables, the user site directory and the working directory.
ISOLATED_PYTHON = (sys.executable, "-I")


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class ProcessExecutor:
    name = "process"
    # Each MCP session of a bridged stdio server starts a server process of its own: a health check must
    # not give up on one attempt and open another while the first server is still starting.
    sessions_start_servers = True

    def __init__(
        self,
        state_dir: Path,
        *,
        install_timeout: float = 600.0,
        sandbox_mode: str = "off",
        installer_uid: int = 265536,
        allow_sdist: bool = False,
        find_links: str | None = None,
        hidden: tuple[Path, ...] = (),
        bridge_max_sessions: int = 32,
        bridge_idle_seconds: float = 600.0,
        bridge_prestart: bool = True,
    ) -> None:
        self.state_dir = state_dir
        # The bridge starts the first session's server with itself (the health check's session takes it).
        self.bridge_prestart = bridge_prestart
        self.bridge_max_sessions = bridge_max_sessions
        self.bridge_idle_seconds = bridge_idle_seconds
        self.envs_dir = state_dir / "envs"
        self.logs_dir = state_dir / "logs"
        self.work_dir = state_dir / "work"
        self.plans_dir = state_dir / "plans"
        self.records_dir = state_dir / "instances"
        self.install_timeout = install_timeout
        self.sandbox_mode = sandbox_mode
        self.installer_uid = installer_uid
        self.allow_sdist = allow_sdist
        self.find_links = find_links
        # What no hosted code may see besides the usual (the whole platform state directory, .env files).
        self.hidden = tuple(str(p) for p in (state_dir, *hidden))
        self.support = sandbox.probe() if sandbox_mode == "required" else None
        for d in (self.envs_dir, self.logs_dir, self.work_dir, self.plans_dir, self.records_dir):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.plans_dir, self.records_dir, self.logs_dir):
            os.chmod(d, 0o700)
        self.seccomp_program = (
            sandbox_plan.write_seccomp_program(self.plans_dir / "seccomp.bpf") if self.sandboxed else None
        )

    @property
    def sandboxed(self) -> bool:
        """Whether installs and servers run sandboxed on this host."""
        return self.support is not None and self.support.ok

    def _require_sandbox(self, spec: LaunchSpec) -> bool:
        """Whether this server runs sandboxed; refuses an untrusted server where no sandbox can be had."""
        if self.support is None:
            return False  # PROCESS_SANDBOX=off: a single-user installation
        if self.support.ok:
            return True
        if spec.trusted:
            return False
        raise PermanentFailure(
            f"{self.support.describe()}. Servers of non-administrators run on the process runtime only in "
            "the sandbox; install what is missing, or use the docker runtime"
        )

    # ---- preparation -------------------------------------------------------------------------

    async def prepare(self, spec: LaunchSpec) -> str:
        self._require_sandbox(spec)
        argv = await self._resolve_argv(spec.source)
        how = f"sandboxed ({self.support.limits})" if self.sandboxed and self.support else "not sandboxed"
        return f"{' '.join(argv)} [{how}]"

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

    # ---- instances ---------------------------------------------------------------------------

    def _base_env(self) -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k in _PASSTHROUGH_ENV}

    def _helper_env(self) -> dict[str, str]:
        """The environment of the platform's helpers that run as the worker's uid (bridge, launcher): the
        platform's own, whatever a server's config env says."""
        return self._base_env()

    async def launch(self, spec: LaunchSpec) -> Instance:
        existing = [i for i in await self.instances(spec.server_id) if i.deployment_id == spec.deployment_id]
        for instance in existing:
            if (await self.status(instance)).state == "running":
                return instance
        # No record names a running instance; a launch whose worker died between starting the process and
        # recording it may have left one running all the same. It goes before another starts.
        await asyncio.to_thread(self._stop_unrecorded, spec.deployment_id)
        sandboxed = self._require_sandbox(spec)
        argv = await self._resolve_argv(spec.source)
        source = spec.source
        assert not isinstance(source, ImageSource)
        port = free_loopback_port()
        # A bridged server answers only under a secret path: any local user can open a loopback port, but
        # only the platform (which keeps the URL in its database) knows where the server is.
        path = f"/{secrets.token_urlsafe(18)}/mcp" if source.transport == "stdio" else source.path
        url = f"http://127.0.0.1:{port}{path}"
        # The server's environment reaches the server alone. The platform's helpers in between (bridge,
        # launcher) run as the worker's uid with the platform's own environment, in isolated mode, and are
        # handed the server's on a descriptor: a tenant's LD_PRELOAD, PATH or PYTHON* variables never
        # reach a privileged process.
        server_env = self._base_env() | spec.env | {"PORT": str(port)}
        helper_env = self._helper_env()
        log_path = self.logs_dir / f"{spec.deployment_id}.log"
        plan = None
        if sandboxed:
            server_env |= {"HOME": sandbox_plan.HOME, "TMPDIR": "/tmp"}
            plan = self._plan(spec, argv)
            if source.transport == "http":
                server_env |= {"PORT": str(SANDBOX_PORT), "HOST": "0.0.0.0"}
                plan.forward = [port, SANDBOX_PORT]
                plan.api_socket = str(self.plans_dir / f"{spec.deployment_id}.sock")
            self._note(log_path, f"sandboxed as uid {plan.uid} ({self.support.limits if self.support else ''})")
        elif self.support is not None:
            self._note(log_path, f"NOT sandboxed (administrator's server): {self.support.describe()}")
        helper = plan is not None or source.transport == "stdio"
        env_fd = sandbox_plan.env_descriptor(server_env) if helper else None
        if plan is not None:
            plan_path = self.plans_dir / f"{spec.deployment_id}.json"
            plan.write(plan_path)
            launcher = [*ISOLATED_PYTHON, "-m", "runtimes.sandbox", "--plan", str(plan_path)]
            if source.transport == "http":
                launcher += ["--env-fd", str(env_fd)]
            argv = [*launcher, "--", *argv]
        if source.transport == "stdio":
            # The path goes in the environment: a command line is readable by every local user.
            prestart = [] if self.bridge_prestart else ["--no-prestart"]
            via_fd = ["--env-via-fd"] if plan is not None else []
            argv = [
                *ISOLATED_PYTHON,
                "-m",
                "runtimes.bridge",
                "--port",
                str(port),
                *prestart,
                "--env-fd",
                str(env_fd),
                *via_fd,
                "--",
                *argv,
            ]
            helper_env |= {
                BRIDGE_PATH_ENV: path,
                "MCPHOST_BRIDGE_MAX_SESSIONS": str(self.bridge_max_sessions),
                "MCPHOST_BRIDGE_IDLE_SECONDS": str(self.bridge_idle_seconds),
            }
        workdir = self.work_dir / spec.deployment_id
        workdir.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            try:
                proc = subprocess.Popen(
                    argv,
                    cwd=workdir,
                    env=helper_env if helper else server_env,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                    pass_fds=(env_fd,) if env_fd is not None else (),
                )
            except OSError as exc:
                raise CommandNotFound(f"could not start {argv[0]}: {exc}") from None
            finally:
                if env_fd is not None:
                    os.close(env_fd)
        instance = Instance(
            runtime=self.name,
            ref=f"{proc.pid}:{psutil.Process(proc.pid).create_time()}",
            deployment_id=spec.deployment_id,
            server_id=spec.server_id,
            url=url,
        )
        self._record(instance)
        return instance

    def _plan(self, spec: LaunchSpec, argv: list[str]) -> sandbox_plan.SandboxPlan:
        if spec.uid is None:
            raise PermanentFailure("the sandbox needs the server's uid; this worker was not given one")
        # What the sandbox shows is decided by the platform's own settings, never by the server's env.
        ro = [[p, p] for p in sandbox_plan.exposed_paths(self._base_env(), self.hidden)]
        if argv and argv[0].startswith(str(self.envs_dir)):
            env_dir = self.envs_dir.joinpath(*Path(argv[0]).relative_to(self.envs_dir).parts[:2])
            ro.append([str(env_dir), str(env_dir)])
        rw = []
        if spec.data_dir is not None:
            prepare_data_dir(spec.data_dir, spec.uid)
            rw.append([str(spec.data_dir), "/data"])
        resources = spec.resources
        return sandbox_plan.SandboxPlan(
            uid=spec.uid,
            argv=argv,
            cgroup=spec.deployment_id,
            ro_binds=ro,
            rw_binds=rw,
            hidden=list(self.hidden),
            memory_mib=resources.memory_mib if resources else None,
            cpu=resources.cpu if resources else None,
            pids=resources.pids if resources else None,
            seccomp_program=self.seccomp_program,
        )

    @staticmethod
    def _note(log_path: Path, message: str) -> None:
        with open(log_path, "a") as fh:
            fh.write(f"mcphost: {message}\n")

    # ---- instance records ----------------------------------------------------------------------

    def _record_path(self, server_id: str, deployment_id: str) -> Path:
        return self.records_dir / server_id / f"{deployment_id}.json"

    def _record(self, instance: Instance) -> None:
        path = self._record_path(instance.server_id, instance.deployment_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(instance.to_dict()))
        os.replace(tmp, path)

    async def instances(self, server_id: str) -> list[Instance]:
        return await asyncio.to_thread(self._read_records, server_id)

    async def server_ids(self) -> list[str]:
        def listed() -> list[str]:
            return sorted(
                d.name for d in self.records_dir.iterdir() if d.is_dir() and re.fullmatch(r"[0-9a-f-]{36}", d.name)
            )

        return await asyncio.to_thread(listed)

    def _read_records(self, server_id: str) -> list[Instance]:
        folder = self.records_dir / server_id
        if not re.fullmatch(r"[0-9a-f-]{36}", server_id) or not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.glob("*.json")):
            try:
                found.append(Instance(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                continue
        return found

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

    def _unrecorded(self, deployment_id: str) -> list[psutil.Process]:
        """Processes started for a deployment, recorded or not: every one of them (bridge, launcher, an
        unsandboxed server) runs in the deployment's own working directory, which nothing else uses."""
        workdir = os.path.realpath(self.work_dir / deployment_id)
        found = []
        for proc in psutil.process_iter():
            try:
                if proc.cwd() == workdir:
                    found.append(proc)
            except (psutil.Error, OSError):
                continue
        return found

    def _stop_unrecorded(self, deployment_id: str, grace: float = 5.0) -> None:
        """Stop, with their process groups, the processes of a deployment (see `_unrecorded`)."""
        procs = self._unrecorded(deployment_id)
        groups = set()
        for proc in procs:
            try:
                groups.add(os.getpgid(proc.pid))
            except ProcessLookupError:
                continue
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for group in groups:
                try:
                    os.killpg(group, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            procs = psutil.wait_procs(procs, timeout=grace)[1]
            if not procs:
                return

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
        await asyncio.to_thread(self._stop_unrecorded, instance.deployment_id)
        shutil.rmtree(self.work_dir / instance.deployment_id, ignore_errors=True)
        await asyncio.to_thread(sandbox_limits.remove_cgroup, instance.deployment_id)
        for leftover in (
            self._record_path(instance.server_id, instance.deployment_id),
            self.plans_dir / f"{instance.deployment_id}.json",
            self.plans_dir / f"{instance.deployment_id}.sock",
        ):
            leftover.unlink(missing_ok=True)

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
