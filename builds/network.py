"""The network RUN steps of image builds get: the internet where the build host has it, never the host.

Each build gets a network namespace of its own, made by the worker (the engine's RUN containers join it
by path), with two layers:

- slirp4netns as its only way out: a user-mode TCP/IP stack whose connections are ordinary sockets of a
  process on the host, with the host's loopback (10.0.2.2) disabled. It reaches what the host reaches,
  so it alone would still let a build connect to the host's other addresses, its LAN, a cloud metadata
  endpoint or another container's bridge;
- an nftables table inside the namespace that rejects every destination that is not the internet:
  loopback, private, shared (100.64/10), link-local, reserved and multicast ranges, every address of the
  build host and every network it is directly attached to, and all IPv6 (slirp4netns gives the build
  none). The build's own loopback works; DNS goes only to slirp4netns's resolver (10.0.2.3), which asks
  the host's. Destinations it rejected are recorded, so a failed build can say what it tried to reach.

The table is out of the build's reach: RUN steps run without CAP_NET_ADMIN and CAP_NET_RAW (no packet
sockets past the filter), and the namespace belongs to the host's user namespace. Connections are
rejected at once, so a build that tries fails with "No route to host" instead of hanging.

The engine must run on this worker's host, as root: podman's API takes the namespace in `nsoptions`.
The path it is given is a link in RUN_DIR named by a random token: an engine elsewhere (or in another
pid namespace) finds no such path and the build fails, instead of joining some other namespace.
"""

from __future__ import annotations

import ipaddress
import json
import os
import secrets
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

RUN_DIR = Path("/run/mcphost-build-net")
TABLE = "mcphost_build"
SLIRP_DNS = "10.0.2.3"
# Never the internet: "this network", private, shared (CGNAT), loopback, link-local, IETF protocol
# assignments (a cloud's metadata service among them), multicast, reserved and broadcast.
ALWAYS_BLOCKED = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
TOOLS = (
    ("slirp4netns", "slirp4netns"),
    ("nft", "nftables"),
    ("ip", "iproute2"),
    ("unshare", "util-linux"),
    ("nsenter", "util-linux"),
)
HELPER_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
UNREACHABLE = (
    "builds reach the internet only, never the build host (127.0.0.1 in a build is the build's own loopback) "
    "or private (10/8, 172.16/12, 192.168/16, 100.64/10) and link-local (169.254/16) networks"
)


class BuildNetworkError(Exception):
    """No build network. `permanent`: this host cannot make one (a missing tool, no root), so trying again
    fails the same way; otherwise it did not come up this time, and nothing was built."""

    def __init__(self, message: str, permanent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


def host_problem() -> str | None:
    """Why this worker cannot make build networks, or None when it can."""
    missing = [f"{tool} ({package})" for tool, package in TOOLS if shutil.which(tool, path=HELPER_ENV["PATH"]) is None]
    if missing:
        return f"needs on the worker host: {', '.join(missing)}"
    if os.geteuid() != 0:
        return "needs a worker running as root (it makes network namespaces)"
    return None


def _ip_routes(*args: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        ["ip", "-j", "-4", "route", "show", *args], capture_output=True, text=True, env=HELPER_ENV, timeout=10
    )
    if result.returncode != 0:
        raise BuildNetworkError(f"cannot list the host's addresses: {result.stderr.strip()}", permanent=False)
    routes = json.loads(result.stdout or "[]")
    return [route for route in routes if isinstance(route, dict)]


def host_networks() -> list[str]:
    """The host's own addresses (every local route, not only interface addresses) and the networks it is
    directly attached to (its LAN, container bridges): reachable through slirp4netns, never the internet."""
    destinations = [route.get("dst", "") for route in _ip_routes("table", "local", "type", "local")]
    destinations += [route.get("dst", "") for route in _ip_routes("table", "main", "scope", "link")]
    return [dst for dst in destinations if dst and dst != "default"]


def blocked_networks(host: list[str]) -> list[str]:
    networks: list[ipaddress.IPv4Network] = []
    for value in (*ALWAYS_BLOCKED, *host):
        try:
            networks.append(ipaddress.IPv4Network(value, strict=False))
        except ValueError:
            continue
    return [str(network) for network in ipaddress.collapse_addresses(networks)]


def nft_ruleset(blocked: list[str]) -> str:
    elements = ", ".join(blocked)
    return (
        f"table inet {TABLE} {{\n"
        f"  set blocked {{ type ipv4_addr; flags interval; elements = {{ {elements} }}; }}\n"
        "  set tried { type ipv4_addr; size 1024; flags dynamic; }\n"
        "  chain output {\n"
        "    type filter hook output priority filter; policy accept;\n"
        '    oifname "lo" accept\n'
        f"    ip daddr {SLIRP_DNS} meta l4proto {{ tcp, udp }} th dport 53 accept\n"
        "    meta nfproto ipv6 reject with icmpx type admin-prohibited\n"
        # Recording is a rule of its own: a full set makes `add` end the rule, and must not skip the reject.
        "    ip daddr @blocked add @tried { ip daddr }\n"
        "    ip daddr @blocked reject with icmpx type admin-prohibited\n"
        "  }\n"
        "}\n"
    )


def engine_params(namespace: str) -> dict[str, str]:
    """Query parameters of podman's build endpoint that put RUN steps into `namespace`."""
    return {
        "nsoptions": json.dumps([{"Name": "network", "Host": False, "Path": namespace}]),
        "dnsservers": json.dumps([SLIRP_DNS]),
        "dropcaps": json.dumps(["CAP_NET_RAW", "CAP_NET_ADMIN"]),
    }


class BuildNetwork:
    """One build's namespace, for a `with` block around the build; removed however the build ends."""

    def __init__(self, run_dir: Path = RUN_DIR) -> None:
        self.run_dir = run_dir
        self.dir: Path | None = None
        self.holder: subprocess.Popen[bytes] | None = None
        self.slirp: subprocess.Popen[bytes] | None = None
        self._slirp_exit: int | None = None

    @property
    def path(self) -> str:
        assert self.dir is not None
        return str(self.dir / "net")

    def __enter__(self) -> BuildNetwork:
        problem = host_problem()
        if problem:
            raise BuildNetworkError(f"cannot make the build network: it {problem}", permanent=True)
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _start(self) -> None:
        blocked = blocked_networks(host_networks())
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_stale(self.run_dir)
        self.dir = self.run_dir / secrets.token_hex(12)
        self.dir.mkdir(mode=0o700)
        # The namespace lives while this process does: it ends when its stdin closes, as when the worker dies.
        with open(self.dir / "unshare.log", "wb") as log:
            self.holder = subprocess.Popen(
                ["unshare", "--net", "--", "cat"], stdin=subprocess.PIPE, stdout=log, stderr=log, env=HELPER_ENV
            )
        namespace = f"/proc/{self.holder.pid}/ns/net"
        deadline = time.monotonic() + 10
        while _namespace_of(namespace) == _namespace_of("/proc/self/ns/net") and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.holder.poll() is not None or _namespace_of(namespace) in ("", _namespace_of("/proc/self/ns/net")):
            output = (self.dir / "unshare.log").read_text(errors="replace").strip()[-500:]
            raise BuildNetworkError(f"cannot make the build network namespace (unshare): {output}", permanent=True)
        # The filter is in place before the namespace has any way out.
        loaded = subprocess.run(
            ["nsenter", f"--net={namespace}", "nft", "-f", "-"],
            input=nft_ruleset(blocked),
            capture_output=True,
            text=True,
            env=HELPER_ENV,
            timeout=30,
        )
        if loaded.returncode != 0:
            raise BuildNetworkError(
                f"cannot filter the build network (nftables): {loaded.stderr.strip()}", permanent=True
            )
        self._start_slirp()
        (self.dir / "net").symlink_to(namespace)

    def _start_slirp(self) -> None:
        assert self.holder is not None and self.dir is not None
        ready_r, ready_w = os.pipe()
        # slirp4netns ends when this end closes: at the end of the build, or when the worker dies.
        exit_r, self._slirp_exit = os.pipe()
        os.set_inheritable(self._slirp_exit, False)
        try:
            with open(self.dir / "slirp4netns.log", "wb") as log:
                self.slirp = subprocess.Popen(
                    [
                        "slirp4netns",
                        "--configure",
                        "--mtu=65520",
                        "--disable-host-loopback",
                        # Not --enable-sandbox: its mount namespace leaves the host's shared mounts shared, and
                        # its detach of the old root then unmounts them on the host too (the engine's
                        # network namespaces under /run/netns among them).
                        "--enable-seccomp",
                        f"--ready-fd={ready_w}",
                        f"--exit-fd={exit_r}",
                        str(self.holder.pid),
                        "tap0",
                    ],
                    pass_fds=(ready_w, exit_r),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=HELPER_ENV,
                )
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
            os.close(exit_r)
        try:
            readable, _, _ = select.select([ready_r], [], [], 30)
            came_up = os.read(ready_r, 1) if readable else b""
        finally:
            os.close(ready_r)
        if not came_up:
            output = (self.dir / "slirp4netns.log").read_text(errors="replace").strip()[-500:]
            raise BuildNetworkError(f"the build network did not come up (slirp4netns): {output}", permanent=False)

    def blocked_attempts(self) -> list[str]:
        """Addresses the build tried to reach and was refused, as far as the namespace recorded them."""
        if self.holder is None or self.holder.poll() is not None:
            return []
        listed = subprocess.run(
            ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "nft", "-j", "list", "set", "inet", TABLE, "tried"],
            capture_output=True,
            text=True,
            env=HELPER_ENV,
            timeout=30,
        )
        if listed.returncode != 0:
            return []
        found: list[str] = []
        try:
            for item in json.loads(listed.stdout).get("nftables", []):
                for element in (item.get("set") or {}).get("elem", []):
                    value = element.get("elem", {}).get("val") if isinstance(element, dict) else element
                    if isinstance(value, str):
                        found.append(value)
        except (ValueError, AttributeError):
            return []
        return sorted(found, key=lambda address: ipaddress.ip_address(address))

    def close(self) -> None:
        if self._slirp_exit is not None:
            os.close(self._slirp_exit)
            self._slirp_exit = None
        for proc in (self.slirp, self.holder):
            if proc is None:
                continue
            if proc.stdin is not None:
                proc.stdin.close()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.slirp = self.holder = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


def _namespace_of(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _remove_stale(run_dir: Path) -> None:
    """Directories of builds whose worker died: their namespace is gone, the link dangles."""
    for entry in run_dir.iterdir():
        link = entry / "net"
        if link.is_symlink() and not link.exists():
            shutil.rmtree(entry, ignore_errors=True)
