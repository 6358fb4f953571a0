"""A hostile MCP server: each tool tries one thing a hosted server must never manage, and says what it got.

Packaged as a wheel by tests/support/hostile.py and installed like any PyPI server.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from mcp.server.mcpserver import MCPServer

app = MCPServer("mcphost-hostile")


@app.tool()
def read_file(path: str) -> str:
    """Read a file; 'DENIED: <why>' when it cannot."""
    try:
        with open(path, errors="replace") as fh:
            return "READ: " + fh.read(4096)
    except OSError as exc:
        return f"DENIED: {exc}"


@app.tool()
def write_file(path: str, text: str) -> str:
    """Write a file; 'DENIED: <why>' when it cannot."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w") as fh:
            fh.write(text)
        return "WROTE"
    except OSError as exc:
        return f"DENIED: {exc}"


@app.tool()
def scan_processes(needle: str) -> str:
    """Look for `needle` in every visible process's environment and command line."""
    seen, found = 0, []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        seen += 1
        for part in ("environ", "cmdline"):
            try:
                with open(f"/proc/{pid}/{part}", "rb") as fh:
                    if needle.encode() in fh.read():
                        found.append(f"{pid}/{part}")
            except OSError:
                continue
    return json.dumps({"visible_processes": seen, "found": found})


@app.tool()
def connect(host: str, port: int) -> str:
    """Open a TCP connection; 'CONNECTED' or 'FAILED: <why>'."""
    try:
        with socket.create_connection((host, port), timeout=3):
            return "CONNECTED"
    except OSError as exc:
        return f"FAILED: {exc}"


@app.tool()
def fork_many(count: int) -> str:
    """Start up to `count` sleeping processes; report how many it got."""
    made = []
    try:
        for _ in range(count):
            made.append(subprocess.Popen(["sleep", "5"], stdin=subprocess.DEVNULL))
    except OSError as exc:
        stopped_by: str | None = str(exc)
    else:
        stopped_by = None
    for proc in made:
        proc.kill()
    for proc in made:
        proc.wait()
    return json.dumps({"forked": len(made), "stopped_by": stopped_by})


@app.tool()
def allocate(mib: int) -> str:
    """Hold `mib` MiB of touched memory."""
    blocks = [bytearray(1024 * 1024) for _ in range(mib)]
    return f"ALLOCATED {len(blocks)} MiB"


@app.tool()
def escalate() -> str:
    """Try to become root; report who it is afterwards."""
    result = {}
    try:
        os.setuid(0)
        result["setuid"] = "OK"
    except OSError as exc:
        result["setuid"] = f"DENIED: {exc}"
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("Uid", "NoNewPrivs", "CapEff", "CapBnd"):
                result[key] = value.strip()
    result["euid"] = str(os.geteuid())
    return json.dumps(result)


@app.tool()
def list_dir(path: str) -> str:
    """List a folder; 'DENIED: <why>' when it cannot."""
    try:
        return json.dumps(sorted(os.listdir(path)))
    except OSError as exc:
        return f"DENIED: {exc}"


# x86_64 numbers of calls a server never needs, with harmless arguments: each either fails at once or
# does nothing lasting (a keyring lookup, a user namespace of this process's own).
_CALLS = {
    "unshare_user": (272, (0x10000000,)),
    "keyctl": (250, (0, -3, 0)),  # KEYCTL_GET_KEYRING_ID of the session keyring
    "userfaultfd": (323, (1,)),  # UFFD_USER_MODE_ONLY
    "perf_event_open": (298, (0, 0, -1, -1, 0)),
    "bpf": (321, (0, 0, 0)),
    "init_module": (175, (0, 0, 0)),
    "mount": (165, (0, 0, 0, 0, 0)),
    "io_uring_setup": (425, (1, 0)),
}


@app.tool()
def syscalls() -> str:
    """Make each call in _CALLS from a new single-threaded process (a user namespace needs one); report 'OK'
    or the errno name of each."""
    done = subprocess.run([sys.executable, __file__, "--syscalls"], capture_output=True, text=True, timeout=30)
    return done.stdout.strip() or f"FAILED: {done.stderr[-500:]}"


def probe_syscalls() -> str:
    import ctypes
    import errno

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    result = {}
    for name, (number, args) in _CALLS.items():
        code = libc.syscall(number, *(ctypes.c_long(a) for a in args))
        result[name] = "OK" if code >= 0 else errno.errorcode.get(ctypes.get_errno(), "?")
    return json.dumps(result)


def main() -> None:
    # `--http`: serve streamable HTTP on $HOST:$PORT instead of stdio (the platform's http transport).
    if "--syscalls" in sys.argv[1:]:
        print(probe_syscalls())
        return
    if "--http" in sys.argv[1:]:
        app.run("streamable-http", host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ["PORT"]))
    else:
        app.run()


if __name__ == "__main__":
    main()
