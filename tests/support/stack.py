"""A running platform for tests and benchmarks: API (uvicorn, in this event loop) and worker (in this
process or as a real subprocess), against the real Temporal and Postgres given to it."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import httpx
import uvicorn
from pydantic import SecretStr

from api.app import create_app
from api.deps import AppState
from core.settings import Settings
from gateway.asgi import WithGateway
from tests.support.components import free_port
from tests.support.hostile import LOCAL_WHEELS
from worker.main import run_worker

PASSWORD = "correct horse battery staple"


def make_settings(database_url: str, temporal_address: str, state_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "temporal_address": temporal_address,
        "temporal_task_queue": f"mcphost-test-{uuid.uuid4().hex[:8]}",
        "jwt_secret": "test-secret-" + "x" * 40,
        "secrets_key": "test-secrets-key-" + "y" * 40,
        "bind_address": "127.0.0.1",
        "bind_port": free_port(),
        "state_dir": state_dir,
        "health_check_timeout_seconds": 60,
        # The suite registers hundreds of accounts from one address; rate limits have tests of their own.
        "package_find_links": str(LOCAL_WHEELS),
        "login_rate_per_minute": 100000,
        "login_account_rate_per_minute": 100000,
        # Redeploys under traffic are tested with a drain short enough to watch it end.
        "gateway_drain_seconds": 15,
        "gateway_session_idle_seconds": 5,
        # Supervisors probe every running server; the tests that are about them turn them on.
        "supervisor_interval_seconds": 0,
        # A reconciler would remove what other tests leave for a moment; its own tests run it by hand.
        "reconcile_interval_seconds": 0,
        # One prune schedule serves a whole Temporal namespace: each test platform's worker would aim it at its own
        # task queue, which is gone once that platform stops. Its own tests keep it by hand.
        "prune_history_interval_seconds": 0,
    }
    values.update(overrides)
    return Settings.model_validate(values)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a subprocess (worker, CLI) see the same settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:
            env.pop(name.upper(), None)
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[name.upper()] = str(value)
    return env


@dataclass
class WorkerProcess:
    """A worker in its own process, so tests can kill it like a crash would."""

    settings: Settings
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "worker"], env=settings_env(self.settings), stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@dataclass
class Stack:
    settings: Settings
    in_process_worker: bool = True
    # Temporal interceptors for the in-process worker: tests inject faults into chosen activities with them.
    worker_interceptors: list[Any] = field(default_factory=list)
    base_url: str = ""
    _server: uvicorn.Server | None = None
    _tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    _worker_stop: asyncio.Event = field(default_factory=asyncio.Event)
    _lean: Any = None  # gateway.server.GatewayServer, once a test asked for it
    _lean_url: str = ""

    async def start(self) -> None:
        # The API's socket is bound here, before anything else can take the port between choosing it and
        # listening on it; a port that is already taken gets a fresh one.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", self.settings.bind_port))
        except OSError:
            sock.bind(("127.0.0.1", 0))
            self.settings = self.settings.model_copy(update={"bind_port": sock.getsockname()[1]})
        app = create_app(self.settings)
        config = uvicorn.Config(app, log_level="warning")
        self._server = uvicorn.Server(config)
        self._tasks.append(asyncio.create_task(self._server.serve(sockets=[sock])))
        self.base_url = f"http://127.0.0.1:{self.settings.bind_port}"
        if self.in_process_worker:
            self._tasks.append(
                asyncio.create_task(run_worker(self.settings, self._worker_stop, self.worker_interceptors))
            )
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("API did not start")
            await asyncio.sleep(0.05)
        # Listening is not the same as answering: ask it something before handing it to a test.
        async with self.client() as probe:
            while True:
                try:
                    await probe.get("/api/health", timeout=5)
                    return
                except httpx.TransportError as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"API at {self.base_url} does not answer: {exc!r}") from None
                await asyncio.sleep(0.1)

    @property
    def state(self) -> AppState:
        """The API process's state (route cache, login limits), for tests that look inside it."""
        assert self._server is not None
        app = cast(WithGateway, self._server.config.app)
        return cast(AppState, app.state.mcphost)

    async def lean_gateway(self) -> str:
        """Base URL of the gateway's own HTTP server (what `mcphost gateway` runs) in front of this process's
        gateway: the same routes, keys, limits and metering as under uvicorn. Started on first use."""
        if self._lean is None:
            from gateway.server import GatewayServer

            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            self._lean = GatewayServer(self.state.gateway.gateway)
            port = await self._lean.listen(sock=sock)
            self._lean_url = f"http://127.0.0.1:{port}"
        return self._lean_url

    async def stop(self) -> None:
        if self._lean is not None:
            await self._lean.shutdown(grace=5)
        self._worker_stop.set()
        if self._server is not None:
            self._server.should_exit = True
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # Idle connections are dropped before uvicorn's 5 s keep-alive closes them from its side: reusing
        # one the server is closing at that very moment fails with a ReadError.
        return httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=60, limits=httpx.Limits(keepalive_expiry=2.0)
        )

    async def user(self, email: str | None = None, role: str = "user") -> tuple[httpx.AsyncClient, dict[str, Any]]:
        """Register and log in a new user with the given role; returns an authenticated client and the user."""
        email = email or f"user-{uuid.uuid4().hex[:8]}@example.com"
        async with self.client() as anon:
            reg = await anon.post("/api/register", json={"email": email, "password": PASSWORD})
            assert reg.status_code == 202, reg.text
            login = await anon.post("/api/login", json={"email": email, "password": PASSWORD})
            assert login.status_code == 200, login.text
            token = login.json()["access_token"]
            # Registering does not say which account it made (or whether it made one): the account says.
            me = await anon.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200, me.text
        user: dict[str, Any] = me.json()
        if user["role"] != role:
            await self._set_role(user["id"], role)
            user["role"] = role
        return self.client(token), user

    async def _set_role(self, user_id: str, role: str) -> None:
        from sqlalchemy import update
        from sqlalchemy.ext.asyncio import create_async_engine

        from core.models import User

        engine = create_async_engine(self.settings.database_url)
        async with engine.begin() as conn:
            await conn.execute(update(User).where(User.id == uuid.UUID(user_id)).values(role=role))
        await engine.dispose()

    async def sandbox_uid(self, server_id: str) -> int:
        """The host uid the platform recorded for a server's sandboxed processes and containers."""
        from sqlalchemy import select
        from sqlalchemy.ext.asyncio import create_async_engine

        from core.models import Server
        from core.tenancy import slot_uid

        engine = create_async_engine(self.settings.database_url)
        try:
            async with engine.begin() as conn:
                slot = await conn.scalar(select(Server.uid_slot).where(Server.id == uuid.UUID(server_id)))
        finally:
            await engine.dispose()
        assert slot is not None, f"no server {server_id}"
        return slot_uid(slot, self.settings.sandbox_uid_base)


@asynccontextmanager
async def running(settings: Settings, worker_interceptors: list[Any] | None = None) -> AsyncIterator[Stack]:
    """A second platform (API + in-process worker) for the length of a test or module."""
    platform = Stack(settings, worker_interceptors=worker_interceptors or [])
    await platform.start()
    try:
        yield platform
    finally:
        await platform.stop()


async def wait_for(probe: Any, what: str, timeout: float = 120) -> Any:
    """Poll an async probe until it returns something true (which is returned); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await probe()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def wait_deployment(client: httpx.AsyncClient, deployment_id: str, timeout: float = 180) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.get(f"/api/deployments/{deployment_id}")
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
        # Ended, and every step finished (retiring the earlier revision comes just after `running`).
        if detail["status"] not in ("pending", "deploying") and detail.get("settled", True):
            return detail
        await asyncio.sleep(0.2)
    raise TimeoutError(f"deployment {deployment_id} still not finished after {timeout}s")


async def deploy(client: httpx.AsyncClient, server_id: str, timeout: float = 180) -> dict[str, Any]:
    response = await client.post(f"/api/servers/{server_id}/deployments")
    assert response.status_code == 202, response.text
    return await wait_deployment(client, response.json()["deployment_id"], timeout)
