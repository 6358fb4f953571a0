"""A real OCI registry for tests (Debian's docker-registry, htpasswd auth) and a TCP proxy that injects faults."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from builds.registry import ACCEPT_MANIFESTS
from tests.support.components import terminate

USER = "mcphost"


def available() -> bool:
    return shutil.which("docker-registry") is not None and shutil.which("htpasswd") is not None


class Registry:
    def __init__(self, workdir: Path, port: int, password: str = "first-password") -> None:
        self.workdir = workdir
        self.port = port
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self.htpasswd = workdir / "htpasswd"
        self.config = workdir / "config.yml"
        (workdir / "storage").mkdir(parents=True, exist_ok=True)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write(self) -> None:
        line = subprocess.run(
            ["htpasswd", "-Bbn", USER, self.password], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.htpasswd.write_text(line + "\n")
        self.config.write_text(
            "version: 0.1\n"
            "log: {level: error}\n"
            f"storage:\n  filesystem: {{rootdirectory: {self.workdir / 'storage'}}}\n  delete: {{enabled: true}}\n"
            f"http: {{addr: 127.0.0.1:{self.port}}}\n"
            f"auth:\n  htpasswd: {{realm: mcphost-test, path: {self.htpasswd}}}\n"
        )

    def start(self) -> None:
        self._write()
        log = open(self.workdir / "registry.log", "ab")
        self.proc = subprocess.Popen(
            ["docker-registry", "serve", str(self.config)], stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{self.endpoint}/v2/", timeout=1).status_code in (200, 401):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"docker-registry did not start; see {self.workdir / 'registry.log'}")

    def stop(self) -> None:
        terminate(self.proc)

    def set_password(self, password: str) -> None:
        """Rotate the account's password (the registry reads htpasswd at start, so it restarts)."""
        self.password = password
        self.stop()
        self.start()

    def write_dockerconfig(self, path: Path, endpoint: str, password: str | None = None) -> Path:
        token = base64.b64encode(f"{USER}:{password or self.password}".encode()).decode()
        path.write_text(json.dumps({"auths": {endpoint: {"auth": token}}}))
        return path

    def _get(self, path: str, accept: str | None = None) -> httpx.Response:
        headers = {"Accept": accept} if accept else {}
        return httpx.get(f"http://{self.endpoint}{path}", auth=(USER, self.password), headers=headers, timeout=10)

    def upload_blob(self, repo: str, data: bytes) -> str:
        """A monolithic blob upload (the distribution API's POST then PUT ?digest=); returns the digest."""
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        auth = (USER, self.password)
        started = httpx.post(f"http://{self.endpoint}/v2/{repo}/blobs/uploads/", auth=auth, timeout=10)
        assert started.status_code == 202, started.text
        location = started.headers["location"]
        if location.startswith("/"):
            location = f"http://{self.endpoint}{location}"
        separator = "&" if "?" in location else "?"  # the Location keeps upload state in its query
        done = httpx.put(f"{location}{separator}digest={digest}", content=data, auth=auth, timeout=10)
        assert done.status_code == 201, done.text
        return digest

    def tags(self, repo: str) -> list[str]:
        response = self._get(f"/v2/{repo}/tags/list")
        if response.status_code == 404:
            return []
        return list(response.json().get("tags") or [])

    def manifest(self, repo: str, ref: str) -> tuple[int, dict[str, Any] | None, str | None]:
        response = self._get(f"/v2/{repo}/manifests/{ref}", ACCEPT_MANIFESTS)
        if response.status_code != 200:
            return response.status_code, None, None
        return 200, response.json(), response.headers.get("docker-content-digest")


class FaultProxy:
    """TCP proxy on loopback: the next `drop` connections are reset at once, the next `delay_count`
    ones are held `delay` seconds before being relayed; the rest pass through."""

    def __init__(self, listen_port: int, target_port: int) -> None:
        self.listen_port = listen_port
        self.target_port = target_port
        self.drop = 0
        self.delay = 0.0
        self.delay_count = 0
        self.connections = 0
        self.dropped = 0
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.listen_port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._start(), self._loop)
        future.result(timeout=10)
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.listen_port)

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)

    def arm(self, drop: int = 0, delay: float = 0.0, delay_count: int = 0) -> None:
        self.drop, self.delay, self.delay_count = drop, delay, delay_count
        self.connections = self.dropped = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.drop > 0:
            self.drop -= 1
            self.dropped += 1
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER 0: close with a reset, as a failing network or load balancer would.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        if self.delay_count > 0:
            self.delay_count -= 1
            await asyncio.sleep(self.delay)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                try:
                    dst.close()
                except Exception:  # noqa: BLE001 - already closed
                    pass

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
