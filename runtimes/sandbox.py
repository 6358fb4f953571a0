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
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_GROUP = "mcphost"
HOME = "/home/mcp"
# The environment of every privileged step (bwrap, the barrier shell, setpriv): fixed, never the tenant's.
HELPER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
# Where the bridge names the descriptor that carries a server's config env to the launcher it starts.
ENV_FD_ENV = "MCPHOST_SERVER_ENV_FD"
# The last step inside the sandbox, already as the server's uid: read the server's environment from the
# descriptor and become the server. Python in isolated mode without site, so it reads nothing but that.
APPLY_ENV = (
    "import json, os, sys\n"
    "fd = int(sys.argv[1])\n"
    "data = b''\n"
    "while chunk := os.read(fd, 1 << 16):\n"
    "    data += chunk\n"
    "os.close(fd)\n"
    "os.execve(sys.argv[2], sys.argv[2:], json.loads(data))\n"
)
# What every sandbox shows of the host, read-only: the system's programs and libraries...
SYSTEM_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
# ...and the files of /etc that programs read: the trust store, name resolution, users and groups, the
# dynamic linker's cache, the time zone, and the system's Python configuration.
SYSTEM_ETC = (
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "pki",
    "crypto-policies",
    "resolv.conf",
    "hosts",
    "host.conf",
    "nsswitch.conf",
    "gai.conf",
    "services",
    "protocols",
    "passwd",
    "group",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "alternatives",
    "mime.types",
    "os-release",
    "debian_version",
    "python3",
    "python3.11",
)


@dataclass
class SandboxPlan:
    """Everything the launcher needs, written as JSON by the platform (never holds secrets: the server's
    config env reaches the launcher on a descriptor, see `env_descriptor`)."""

    uid: int
    argv: list[str]
    cgroup: str
    ro_binds: list[list[str]] = field(default_factory=list)  # [host path, path inside]
    rw_binds: list[list[str]] = field(default_factory=list)
    # Never shown, even where a system folder holds it (a state directory under /usr/local, say).
    hidden: list[str] = field(default_factory=list)
    network: bool = True
    memory_mib: int | None = None
    cpu: float | None = None
    pids: int | None = None
    chdir: str = HOME
    # [host port, port inside]: an inbound TCP forward from the host's loopback (servers that speak HTTP)
    forward: list[int] | None = None
    api_socket: str | None = None
    # The seccomp filter as a BPF program the platform wrote (so the launcher, resident for a session's
    # life, need not load libseccomp itself); made here when absent.
    seccomp_program: str | None = None

    def write(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)

    @classmethod
    def read(cls, path: Path) -> SandboxPlan:
        return cls(**json.loads(path.read_text()))


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


def _seccomp_descriptor(plan: SandboxPlan) -> int:
    if plan.seccomp_program:
        return os.open(plan.seccomp_program, os.O_RDONLY)
    from runtimes import seccomp

    return seccomp.descriptor()


def write_seccomp_program(path: Path) -> str:
    """The seccomp filter's BPF program in a file of the platform's own, for plans to name."""
    from runtimes import seccomp

    program = seccomp.program()
    if not path.exists() or path.read_bytes() != program:
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(program)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    return str(path)


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


def cgroup_mode() -> str:
    if os.geteuid() != 0:
        return "rlimit"
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split() and os.access(CGROUP_ROOT, os.W_OK):
        return "cgroup-v2"
    if (CGROUP_ROOT / "memory").is_dir() and os.access(CGROUP_ROOT / "memory", os.W_OK):
        return "cgroup-v1"
    return "rlimit"


def env_descriptor(env: dict[str, str]) -> int:
    """An anonymous in-memory file holding `env` (JSON), for a child to inherit: the way a server's config
    env travels to the sandbox without touching disk, a command line or a privileged process's environment."""
    fd = os.memfd_create("mcphost-env")
    os.write(fd, json.dumps(env).encode())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def read_env_descriptor(fd: int) -> dict[str, str]:
    """What `env_descriptor` wrote; the descriptor is closed."""
    chunks = []
    try:
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    env = json.loads(b"".join(chunks))
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("the server environment must be a JSON object of strings")
    return env


def exposed_paths(env: dict[str, str], hidden: tuple[str, ...] = ()) -> list[str]:
    """Host paths hosted code needs to read although they may sit under a hidden directory: the Python
    the package environments were made with, and local wheel directories and trust stores the operator
    named for installs. `env` is the platform's own environment, never a server's config env: what a
    sandbox shows is the operator's decision alone."""
    paths = {os.path.realpath(sys.base_prefix)}
    for name in ("PIP_FIND_LINKS", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS"):
        for item in env.get(name, "").split():
            if item.startswith("/") and os.path.exists(item):
                paths.add(os.path.realpath(item))
    # A folder that holds a hidden one (a trust store named as "/") would show it: such a folder is not.
    covering = {p for p in paths for h in hidden if h == p or h.startswith(p.rstrip("/") + "/")}
    return sorted(paths - covering)


def bwrap_argv(
    plan: SandboxPlan,
    info_fd: int,
    ready_fd: int,
    go_fd: int,
    env_fd: int | None = None,
    seccomp_fd: int | None = None,
) -> list[str]:
    argv = [
        shutil.which("bwrap", path=HELPER_ENV["PATH"]) or "bwrap",
        "--die-with-parent",
        "--new-session",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--hostname",
        "mcp",
        "--tmpfs",
        "/",
    ]
    # An allow-list on a root of the sandbox's own: the system's programs and libraries, the few files of
    # /etc that programs read (trust store, name resolution, users, time zone), and then only what the
    # plan names. Nothing else of the host exists inside: not /sys, /run, /var, /home, /srv, /opt or the
    # platform's state.
    for name in SYSTEM_DIRS:
        host = "/" + name
        if os.path.islink(host):
            argv += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            argv += ["--ro-bind", host, host]
    argv += ["--perms", "0755", "--dir", "/etc"]
    for name in SYSTEM_ETC:
        host = "/etc/" + name
        if os.path.exists(host):
            argv += ["--ro-bind", host, host]
    for path in plan.hidden:
        path = os.path.normpath(path)
        if path.split("/")[1] in SYSTEM_DIRS and os.path.isdir(path):
            argv += ["--tmpfs", path]
    argv += ["--dev", "/dev", "--proc", "/proc", "--perms", "0755", "--dir", "/data"]
    if plan.network:
        argv.append("--unshare-net")
    for path in ("/tmp", "/var/tmp", "/dev/shm"):
        argv += ["--tmpfs", path, "--chmod", "1777", path]
    argv += ["--dir", HOME, "--chmod", "0777", HOME]
    # The way down to a path bound in (a package environment, the interpreter) is traversable by the
    # sandbox's uid, and shows nothing beside it.
    ancestors: set[str] = set()
    for _host, inside in (*plan.ro_binds, *plan.rw_binds):
        parent = os.path.dirname(os.path.normpath(inside))
        while parent not in ("/", "") and parent.split("/")[1] not in SYSTEM_DIRS:
            ancestors.add(parent)
            parent = os.path.dirname(parent)
    for path in sorted(ancestors, key=lambda p: p.count("/")):
        argv += ["--perms", "0755", "--dir", path]
    for host, inside in plan.ro_binds:
        argv += ["--ro-bind", host, inside]
    for host, inside in plan.rw_binds:
        argv += ["--bind", host, inside]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    argv += ["--chdir", plan.chdir, "--info-fd", str(info_fd), "--"]
    # Inside, once bwrap has set everything up (its own loopback included): say so, wait for the network
    # the launcher adds from outside, then drop to the server's uid and run the command.
    # Every program on the way runs as root with the launcher's fixed environment and is named by its path.
    barrier = f'echo ready >&{ready_fd}; read go <&{go_fd}; exec {ready_fd}>&- {go_fd}<&-; exec "$@"'
    command = list(plan.argv)
    if env_fd is not None:
        command = [os.path.realpath(sys.executable), "-I", "-S", "-c", APPLY_ENV, str(env_fd), *command]
    argv += [
        "/bin/sh",
        "-c",
        barrier,
        "sandbox",
        shutil.which("setpriv", path=HELPER_ENV["PATH"]) or "/usr/bin/setpriv",
        f"--reuid={plan.uid}",
        f"--regid={plan.uid}",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
        "--",
        *command,
    ]
    return argv


# ---- resource limits --------------------------------------------------------------------------------


class Limits:
    """The cgroup (v2 or v1) a sandbox runs in, or the rlimits that stand in for it."""

    def __init__(self, plan: SandboxPlan) -> None:
        self.plan = plan
        self.mode = cgroup_mode()
        self.dirs: list[Path] = []
        self.oom_before = 0

    def _v2(self) -> None:
        parent = CGROUP_ROOT / CGROUP_GROUP
        parent.mkdir(exist_ok=True)
        for level in (CGROUP_ROOT, parent):
            enabled = set((level / "cgroup.subtree_control").read_text().split())
            available = set((level / "cgroup.controllers").read_text().split())
            wanted = {"memory", "pids", "cpu"} & available - enabled
            if wanted:
                (level / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(wanted)))
        group = parent / self.plan.cgroup
        group.mkdir(exist_ok=True)
        if self.plan.memory_mib:
            (group / "memory.max").write_text(str(self.plan.memory_mib * 1024 * 1024))
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
        if self.plan.pids and (group / "pids.max").exists():
            (group / "pids.max").write_text(str(self.plan.pids))
        if self.plan.cpu and (group / "cpu.max").exists():
            (group / "cpu.max").write_text(f"{int(self.plan.cpu * 100000)} 100000")
        self.dirs = [group]

    def _v1(self) -> None:
        def group(controller: str) -> Path | None:
            root = CGROUP_ROOT / controller
            if not root.is_dir() or not os.access(root, os.W_OK):
                return None
            path = root / CGROUP_GROUP / self.plan.cgroup
            path.mkdir(parents=True, exist_ok=True)
            self.dirs.append(path)
            return path

        memory = group("memory")
        if memory is not None and self.plan.memory_mib:
            limit = str(self.plan.memory_mib * 1024 * 1024)
            (memory / "memory.limit_in_bytes").write_text(limit)
            memsw = memory / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                try:
                    memsw.write_text(limit)
                except OSError:
                    pass
        pids = group("pids")
        if pids is not None and self.plan.pids:
            (pids / "pids.max").write_text(str(self.plan.pids))
        cpu = group("cpu")
        if cpu is not None and self.plan.cpu:
            (cpu / "cpu.cfs_period_us").write_text("100000")
            (cpu / "cpu.cfs_quota_us").write_text(str(int(self.plan.cpu * 100000)))

    def enter(self) -> None:
        """Put this launcher (and so everything it starts) into the limits."""
        try:
            if self.mode == "cgroup-v2":
                self._v2()
            elif self.mode == "cgroup-v1":
                self._v1()
            for path in self.dirs:
                (path / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            print(f"mcphost sandbox: cgroup limits unavailable ({exc}); using rlimits", file=sys.stderr)
            self.mode = "rlimit"
        self.oom_before = self.oom_kills()

    def child_rlimits(self) -> None:
        """In the child before exec: rlimits that hold whatever the cgroup mode (a per-uid process count),
        and the memory bound where no cgroup enforces it."""
        if self.plan.pids:
            resource.setrlimit(resource.RLIMIT_NPROC, (self.plan.pids, self.plan.pids))
        if self.mode == "rlimit" and self.plan.memory_mib:
            limit = self.plan.memory_mib * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def oom_kills(self) -> int:
        for path in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                events = path / name
                if events.exists():
                    for line in events.read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            return int(value)
        return 0


def remove_cgroup(name: str, wait: float = 3.0) -> None:
    """Remove a sandbox's cgroups once nothing runs in them (the platform calls this when it removes an
    instance; a launcher never does, as another session of the same server may be entering them). The
    last processes of a stopped instance may take a moment to leave: wait a little for them."""
    deadline = time.monotonic() + wait
    for path in (CGROUP_ROOT / CGROUP_GROUP / name, *CGROUP_ROOT.glob(f"*/{CGROUP_GROUP}/{name}")):
        while True:
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break  # still in use: a later removal of the same instance tries again
                time.sleep(0.05)


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
    seccomp_fd = _seccomp_descriptor(plan)
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
