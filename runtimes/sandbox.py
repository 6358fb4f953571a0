"""The process runtime's sandbox: bubblewrap namespaces, a per-server uid, slirp4netns networking, limits.

A hosted server (and every package install) runs as

    launcher (platform, outside)  ->  bwrap (new pid/ipc/uts/net/mount namespaces)  ->  setpriv (drop to
    the server's own unprivileged uid, no capabilities, no new privileges)  ->  the command

with a read-only view of the host in which the platform's state directory, /run, /tmp, /home and
/root are replaced by empty tmpfs mounts, only the server's own directories bound back in (its package
environment read-only, its /data read-write), and a network namespace whose only way out is a
slirp4netns user-mode stack with the host's loopback disabled: the internet is reachable where the host
reaches it, the platform's Postgres, Temporal, API and other servers' ports are not.

The launcher is this module run as a program (`python -I -m runtimes.sandbox --plan FILE --env-fd N -- cmd
...`). It runs as root with an environment the platform builds, never the server's: the server's config env
comes on a descriptor and is applied only by the last step inside the sandbox, after the uid drop, so no
value a tenant sets (`LD_PRELOAD`, `PATH`, `PYTHONWARNINGS`, ...) is ever seen by a privileged process. It
stays outside the sandbox for the life of the command: it puts itself into the server's cgroup (memory,
cpu and pids limits, v2 or v1) or, where cgroups are not writable, sets rlimits; it starts slirp4netns
once bwrap has made the network namespace and lets the command start only when the network is up; and
when the command dies of the memory limit it says so on stderr, which is the server's log.

The plan and the bubblewrap command line are worked out in `runtimes.sandbox_plan`, the limits in
`runtimes.sandbox_limits`; this module probes the host and is the launcher.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from runtimes.sandbox_limits import Limits, cgroup_mode
from runtimes.sandbox_plan import (
    ENV_FD_ENV,
    HELPER_ENV,
    SandboxPlan,
    bwrap_argv,
    env_descriptor,
    read_env_descriptor,
    seccomp_descriptor,
)


@dataclass(frozen=True)
class SandboxSupport:
    """Whether this host can sandbox hosted processes, and how it limits resources."""

    missing: tuple[str, ...]
    limits: str  # cgroup-v2 | cgroup-v1 | rlimit

    @property
    def ok(self) -> bool:
        return not self.missing

    def describe(self) -> str:
        if self.ok:
            return f"bubblewrap + slirp4netns sandbox, limits by {self.limits}"
        return "the process sandbox cannot be set up on this worker host: missing " + "; ".join(self.missing)


def probe() -> SandboxSupport:
    missing = []
    for tool, package in (("bwrap", "bubblewrap"), ("slirp4netns", "slirp4netns"), ("setpriv", "util-linux")):
        if shutil.which(tool) is None:
            missing.append(f"{tool} (apt-get install {package})")
    from runtimes import seccomp

    if not seccomp.available():
        missing.append("libseccomp (apt-get install libseccomp2)")
    if os.geteuid() != 0:
        missing.append("root privileges for the worker (each server runs as its own uid)")
    return SandboxSupport(missing=tuple(missing), limits=cgroup_mode())


# ---- the launcher -----------------------------------------------------------------------------------


def _read_child_pid(fd: int) -> int:
    data = b""
    while True:
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
        try:
            return int(json.loads(data)["child-pid"])
        except ValueError:
            continue
    raise RuntimeError("bubblewrap did not report its child")


def _add_forward(plan: SandboxPlan) -> None:
    import socket

    assert plan.forward is not None and plan.api_socket is not None
    host_port, guest_port = plan.forward
    request = {
        "execute": "add_hostfwd",
        "arguments": {"proto": "tcp", "host_addr": "127.0.0.1", "host_port": host_port, "guest_port": guest_port},
    }
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(plan.api_socket)
        sock.sendall(json.dumps(request).encode())
        sock.shutdown(socket.SHUT_WR)
        answer = json.loads(sock.recv(65536) or b"{}")
    if "error" in answer:
        raise RuntimeError(f"cannot forward 127.0.0.1:{host_port} into the sandbox: {answer['error']}")


class SetupFailed(Exception):
    """The sandbox did not come up; the command never started, so trying again is safe."""


def _start(
    plan: SandboxPlan, limits: Limits, server_env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes] | None]:
    info_r, info_w = os.pipe()
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    env_fd = env_descriptor(server_env) if server_env is not None else None
    seccomp_fd = seccomp_descriptor(plan)
    inherited = (info_w, ready_w, go_r, seccomp_fd) if env_fd is None else (info_w, ready_w, go_r, seccomp_fd, env_fd)
    proc = subprocess.Popen(
        bwrap_argv(plan, info_w, ready_w, go_r, env_fd, seccomp_fd),
        pass_fds=inherited,
        preexec_fn=limits.child_rlimits,
        # Without a server environment (installs) the command gets the launcher's own, which the platform
        # built; with one, every step before the uid drop gets the fixed helper environment.
        env=None if server_env is None else dict(HELPER_ENV),
    )
    for fd in inherited:
        os.close(fd)
    slirp: subprocess.Popen[bytes] | None = None
    try:
        child = _read_child_pid(info_r)
        if not os.read(ready_r, 16):
            raise SetupFailed("the sandbox ended before it was set up")
        if plan.network:
            up_r, up_w = os.pipe()
            # slirp4netns ends when this launcher does, however it ends (the pipe's other end closes).
            exit_r, exit_w = os.pipe()
            os.set_inheritable(exit_w, False)
            api = ["--api-socket", plan.api_socket] if plan.forward and plan.api_socket else []
            if plan.api_socket:
                Path(plan.api_socket).unlink(missing_ok=True)
            slirp = subprocess.Popen(
                [
                    shutil.which("slirp4netns", path=HELPER_ENV["PATH"]) or "slirp4netns",
                    "--configure",
                    "--mtu=65520",
                    "--disable-host-loopback",
                    *api,
                    "--ready-fd",
                    str(up_w),
                    "--exit-fd",
                    str(exit_r),
                    str(child),
                    "tap0",
                ],
                pass_fds=(up_w, exit_r),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=dict(HELPER_ENV),
            )
            os.close(up_w)
            os.close(exit_r)
            came_up = os.read(up_r, 1)
            os.close(up_r)
            if not came_up:
                raise SetupFailed("the sandbox network did not come up")
            if api:
                _add_forward(plan)
        # The command starts only now, with its network in place.
        os.write(go_w, b"go\n")
    except (OSError, RuntimeError, SetupFailed) as exc:
        proc.kill()
        proc.wait()
        if slirp is not None:
            slirp.kill()
            slirp.wait()
        raise SetupFailed(str(exc)) from None
    finally:
        for fd in (go_w, info_r, ready_r):
            os.close(fd)
    return proc, slirp


def launch(plan: SandboxPlan, attempts: int = 4, server_env: dict[str, str] | None = None) -> int:
    limits = Limits(plan)
    limits.enter()
    for attempt in range(1, attempts + 1):
        try:
            proc, slirp = _start(plan, limits, server_env)
            break
        except SetupFailed as exc:
            # Seen rarely while another sandbox's namespaces are torn down: bwrap's loopback setup fails.
            print(f"mcphost sandbox: setup attempt {attempt} failed ({exc})", file=sys.stderr, flush=True)
            if attempt == attempts:
                return 125
            time.sleep(0.05 * attempt)

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    code = proc.wait()
    if slirp is not None:
        slirp.terminate()
        slirp.wait()
    if limits.oom_kills() > limits.oom_before:
        print(
            f"mcphost: the server was killed: it used more than its memory limit of {plan.memory_mib} MiB",
            file=sys.stderr,
            flush=True,
        )
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtimes.sandbox", description="Run a command in a sandbox.")
    parser.add_argument("--plan", required=True, type=Path, help="the sandbox plan (JSON) written by the platform")
    parser.add_argument(
        "--env-fd",
        type=int,
        default=int(os.environ[ENV_FD_ENV]) if os.environ.get(ENV_FD_ENV, "").isdigit() else None,
        help="a descriptor holding the command's environment (JSON), applied only after the uid drop "
        f"(default: ${ENV_FD_ENV}; without one the command inherits this launcher's environment)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    plan = SandboxPlan.read(ns.plan)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if command:
        plan.argv = command
    server_env = read_env_descriptor(ns.env_fd) if ns.env_fd is not None else None
    raise SystemExit(launch(plan, server_env=server_env))


if __name__ == "__main__":
    main()
