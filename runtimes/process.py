"""The process runtime: MCP servers run as host processes, each in its own session and, unless the
installation turned it off, in its own sandbox (`runtimes.sandbox`).

Packages are installed once into cached environments (a venv per PyPI requirement, an npm prefix per
npm requirement), by a sandboxed installer that runs as a uid of its own: servers get their environment
read-only and can never write into it. Installs take binary wheels only and skip npm install scripts
unless PACKAGE_ALLOW_SDIST is set. A server's command must be an entry point its package declares. The
installs, and the resolution of a source to its command line, are `runtimes.process_install`'s; this
module launches, records, watches and stops the instances.

Each instance is recorded in a file of the platform's own (pid, start time, URL), so a launch repeated
after a worker crash finds the process it already started instead of starting a second one, and no
process a hosted server starts can pass itself off as another server's instance. Processes outlive the
worker that started them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections import deque
from pathlib import Path

import psutil

from core.failures import CommandNotFound, PermanentFailure
from core.sources import ImageSource
from core.tenancy import prepare_data_dir
from runtimes import sandbox, sandbox_limits, sandbox_plan
from runtimes.base import BRIDGE_PATH_ENV, Instance, InstanceStatus, LaunchSpec, free_loopback_port
from runtimes.process_install import ISOLATED_PYTHON, PackageInstaller

SANDBOX_PORT = 8000  # where an HTTP server listens inside its own network namespace


class ProcessExecutor(PackageInstaller):
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

    # ---- instances ---------------------------------------------------------------------------

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
