"""The dual-era test server (tests/support/everything_server) as a local wheel, and a source to deploy it."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.components import terminate
from tests.support.hostile import local_wheel

NAME = "mcphost-everything"
SOURCE = Path(__file__).parent / "everything_server" / "mcphost_everything.py"
# A new version whenever the source changes, so a cached wheel is never stale.
VERSION = f"1.0.{int(hashlib.sha256(SOURCE.read_bytes()).hexdigest()[:7], 16)}"


def build_wheel() -> Path:
    return local_wheel(NAME, VERSION, SOURCE, "mcphost-everything")


def source(*args: str) -> dict[str, Any]:
    """A package source of the server, served over HTTP (its own streamable-HTTP endpoint, no bridge)."""
    return {
        "type": "package",
        "registry": "pypi",
        "package": NAME,
        "version": VERSION,
        "transport": "http",
        "args": ["--http", *args],
    }


class DirectServer:
    """The server run by the test itself on a socket the test bound, outside the platform."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.base}/mcp"

    def start(self) -> DirectServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(512)
        self.port = sock.getsockname()[1]
        env = {**os.environ, **self.env, "MCPHOST_TEST_FD": str(sock.fileno())}
        self.proc = subprocess.Popen(
            [sys.executable, str(SOURCE), "--http", *self.args], env=env, pass_fds=[sock.fileno()]
        )
        sock.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.base}/_requests", timeout=2)
                return self
            except httpx.TransportError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the test MCP server did not start") from None
                time.sleep(0.05)

    def requests_seen(self) -> int:
        return int(httpx.get(f"{self.base}/_requests", timeout=5).text)

    def stop(self) -> None:
        terminate(self.proc)
