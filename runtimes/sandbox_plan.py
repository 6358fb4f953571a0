"""What a process sandbox is made of, worked out before anything runs: the plan the platform writes for
the launcher (`SandboxPlan`), the fixed environment of the privileged steps, the host paths a sandbox
shows, the bubblewrap command line (`bwrap_argv`), the seccomp program a plan names, and the descriptor
that carries a server's config env past every privileged process (`env_descriptor`).

Imported by the launcher (`python -I -m runtimes.sandbox`), which runs as root: standard library only.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

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


def seccomp_descriptor(plan: SandboxPlan) -> int:
    """A descriptor of the seccomp filter's BPF program: the plan's file, or one made here."""
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
