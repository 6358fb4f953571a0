"""stdio -> streamable-HTTP bridge: makes a stdio-only MCP server reachable like any other.

Each MCP session opened over HTTP gets its own child process speaking MCP on stdin/stdout,
the way an MCP client would run it locally; messages are relayed unchanged in both directions
with the official SDK's transports on either side. Session end (DELETE, or bridge shutdown)
stops the child.

    python -m runtimes.bridge --port 8000 -- mcp-server-time --local-timezone UTC

It imports nothing of the platform: the docker runtime copies this file alone into the images it
builds from PyPI packages, where it runs as `python bridge.py`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import anyio
import uvicorn
from anyio.abc import TaskGroup
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.server.streamable_http import StreamableHTTPServerTransport

log = logging.getLogger("mcphost.bridge")

# Where the bridge serves MCP when --path is not given (the platform passes a secret path this way); the
# same name as runtimes.base.BRIDGE_PATH_ENV, repeated because this file must stand alone.
BRIDGE_PATH_ENV = "MCPHOST_BRIDGE_PATH"
# Limits of the bridge, set by the platform (BRIDGE_MAX_SESSIONS, BRIDGE_IDLE_TIMEOUT_SECONDS).
MAX_SESSIONS_ENV = "MCPHOST_BRIDGE_MAX_SESSIONS"
IDLE_SECONDS_ENV = "MCPHOST_BRIDGE_IDLE_SECONDS"
# The memory cgroup of a container, as its processes see it (cgroup v2, then v1).
_OOM_COUNTERS = (("/sys/fs/cgroup/memory.events", "oom_kill"), ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"))
_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY = 4 * 1024 * 1024
MAX_EARLY_EXITS = 3


def oom_kills(counters: tuple[tuple[str, str], ...] = _OOM_COUNTERS) -> int | None:
    """How many processes the kernel has killed in this cgroup for want of memory, where that can be read."""
    for path, key in counters:
        try:
            with open(path) as fh:
                for line in fh:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except (OSError, ValueError):
            continue
    return None


def memory_limit_mib(paths: tuple[str, ...] = _MEMORY_LIMITS) -> int | None:
    for path in paths:
        try:
            with open(path) as fh:
                value = fh.read().strip()
        except OSError:
            continue
        # cgroup v1 says "no limit" with a huge number rather than "max".
        if value.isdigit() and int(value) < 1 << 60:
            return int(value) // (1024 * 1024)
    return None


@dataclass
class _Session:
    transport: StreamableHTTPServerTransport
    ready: anyio.Event = field(default_factory=anyio.Event)
    failed: str | None = None
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    in_flight: int = 0  # requests (GET streams included) being served now
    last_used: float = field(default_factory=time.monotonic)


async def _json_error(send: Send, status: int, message: str, code: int = -32600) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


class StdioBridge:
    def __init__(
        self,
        command: str,
        args: list[str],
        path: str,
        env: dict[str, str] | None = None,
        *,
        report_oom: bool = False,
        max_sessions: int = 32,
        idle_timeout: float = 600.0,
    ) -> None:
        self.params = StdioServerParameters(command=command, args=args, env=env)
        # In a container, a child killed at the memory limit leaves the container (and this bridge) running,
        # so nothing else would tell the server's owner why their session died.
        self.oom_seen = oom_kills() if report_oom else None
        self.path = path.rstrip("/") or "/"
        self.sessions: dict[str, _Session] = {}
        # Each session is a child process: their number is capped, and one nobody has used for
        # `idle_timeout` seconds (its client gone without a DELETE) is ended and its child stopped.
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self.reaped = 0
        self._tg: TaskGroup | None = None
        self._server: uvicorn.Server | None = None
        # A server that dies before answering, again and again, will not get better: give up so the
        # platform sees the process exit (with the server's output in the log) instead of timing out.
        self.answered_once = False
        self.early_exits = 0
        self.gave_up = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if scope["path"].rstrip("/") != self.path.rstrip("/") and scope["path"] != self.path:
            await _json_error(send, 404, "Not Found")  # the path itself may be the secret
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        session_id = headers.get("mcp-session-id")
        if session_id:
            session = self.sessions.get(session_id)
            if session is None:
                await _json_error(send, 404, "Session not found")
                return
            await self._serve(session, session.transport.handle_request(scope, receive, send))
            return
        if scope["method"] != "POST":
            await _json_error(send, 400, "Bad Request: Missing session ID")
            return
        body, replay = await self._buffer(receive)
        if body is None:
            await _json_error(send, 413, f"request body larger than {MAX_BODY} bytes")
            return
        try:
            message = json.loads(body)
        except ValueError:
            await _json_error(send, 400, "Parse error", code=-32700)
            return
        if not (isinstance(message, dict) and message.get("method") == "initialize"):
            # A stdio server only knows the initialize handshake; a modern `server/discover` probe is
            # refused here so clients fall back to it, exactly as a handshake-era HTTP server answers.
            await _json_error(send, 400, "Bad Request: Missing session ID; send initialize first")
            return
        if len(self.sessions) >= self.max_sessions:
            await _json_error(
                send, 503, f"this server has {self.max_sessions} open sessions, its limit; end one or retry later"
            )
            return
        session = await self._open_session()
        if session.failed:
            await _json_error(send, 502, session.failed, code=-32603)
            return
        await self._serve(session, session.transport.handle_request(scope, replay, send))

    @staticmethod
    async def _serve(session: _Session, handling: Awaitable[None]) -> None:
        session.in_flight += 1
        try:
            await handling
        finally:
            session.in_flight -= 1
            session.last_used = time.monotonic()

    def reap_idle(self, now: float | None = None) -> int:
        """End the sessions idle past the timeout (nothing in flight); their children stop. How many."""
        now = time.monotonic() if now is None else now
        ended = 0
        for sid, session in list(self.sessions.items()):
            if session.in_flight == 0 and now - session.last_used > self.idle_timeout:
                log.info("session %s: idle for %.0f s, ending it", sid, now - session.last_used)
                session.scope.cancel()
                ended += 1
        self.reaped += ended
        return ended

    async def _reaper(self) -> None:
        while True:
            await anyio.sleep(max(0.2, min(self.idle_timeout / 4, 10.0)))
            self.reap_idle()

    async def _buffer(self, receive: Receive) -> tuple[bytes | None, Receive]:
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > MAX_BODY:
                return None, receive
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return body, replay

    async def _open_session(self) -> _Session:
        assert self._tg is not None, "bridge not started"
        session = _Session(transport=StreamableHTTPServerTransport(mcp_session_id=uuid4().hex))
        sid = session.transport.mcp_session_id
        assert sid is not None
        self.sessions[sid] = session
        self._tg.start_soon(self._run_session, sid, session)
        await session.ready.wait()
        return session

    async def _run_session(self, sid: str, session: _Session) -> None:
        try:
            with session.scope:
                await self._session_body(sid, session)
        finally:
            session.ready.set()
            self.sessions.pop(sid, None)
            if not session.transport.is_terminated:
                with anyio.CancelScope(shield=True):
                    await session.transport.terminate()
            log.info("session %s closed", sid)
            self._report_oom()

    async def _session_body(self, sid: str, session: _Session) -> None:
        try:
            async with AsyncExitStack() as stack:
                http_read, http_write = await stack.enter_async_context(session.transport.connect())
                try:
                    child_read, child_write = await stack.enter_async_context(
                        stdio_client(self.params, errlog=sys.stderr)
                    )
                except OSError as exc:
                    session.failed = f"could not start {self.params.command}: {exc}"
                    log.error(session.failed)
                    return
                log.info("session %s: started %s", sid, self.params.command)
                session.ready.set()
                relayed = [0]
                async with anyio.create_task_group() as pumps:
                    pumps.start_soon(self._relay, http_read, child_write, pumps.cancel_scope, f"{sid} client", None)
                    pumps.start_soon(self._relay, child_read, http_write, pumps.cancel_scope, f"{sid} server", relayed)
                self._note_session_end(answered=relayed[0] > 0)
        except Exception:
            log.exception("session %s failed", sid)
            session.failed = session.failed or "bridge session failed"

    def _report_oom(self) -> None:
        if self.oom_seen is None:
            return
        now = oom_kills()
        if now is not None and now > self.oom_seen:
            self.oom_seen = now
            limit = memory_limit_mib()
            where = f" of {limit} MiB" if limit else ""
            # The same words the process runtime's sandbox uses, so the owner reads one message on either;
            # written at once, newline included, so that no other line of the log can run into it.
            sys.stderr.write(f"mcphost: the server was killed: it used more than its memory limit{where}\n")
            sys.stderr.flush()

    def _note_session_end(self, *, answered: bool) -> None:
        if answered:
            self.answered_once = True
            self.early_exits = 0
            return
        self.early_exits += 1
        if not self.answered_once and self.early_exits >= MAX_EARLY_EXITS and self._server is not None:
            log.error(
                "the MCP server exited before answering %d times in a row; giving up (see its output above)",
                self.early_exits,
            )
            self.gave_up = True
            self._server.should_exit = True

    @staticmethod
    async def _relay(source: Any, sink: Any, scope: anyio.CancelScope, label: str, count: list[int] | None) -> None:
        """Copy messages until either side closes; then end the whole session."""
        try:
            async for item in source:
                if isinstance(item, Exception):
                    log.warning("%s sent an invalid message: %s", label, item)
                    continue
                await sink.send(item)
                if count is not None:
                    count[0] += 1
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, anyio.EndOfStream):
            pass
        finally:
            scope.cancel()

    async def serve(self, host: str, port: int, sockets: list[Any] | None = None) -> None:
        config = uvicorn.Config(self, host=host, port=port, log_level="warning", lifespan="on")
        server = self._server = uvicorn.Server(config)
        async with anyio.create_task_group() as tg:
            self._tg = tg
            tg.start_soon(self._reaper)
            await server.serve(sockets=sockets)
            tg.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m runtimes.bridge", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default=os.environ.get(BRIDGE_PATH_ENV, "/mcp"))
    parser.add_argument(
        "--report-oom",
        action="store_true",
        help="say in the log when the memory limit of this container killed a child",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=int(os.environ.get(MAX_SESSIONS_ENV, "32")),
        help="sessions (child processes) at once; more are refused with 503",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=float(os.environ.get(IDLE_SECONDS_ENV, "600")),
        help="seconds without a request after which a session is ended and its child stopped",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command [args...] of the stdio server")
    ns = parser.parse_args(argv)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command:
        parser.error("missing the stdio server command after --")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bridge %(levelname)s %(message)s", stream=sys.stderr)
    if shutil.which(command[0]) is None:
        log.error("command not found: %s", command[0])
        raise SystemExit(127)
    # Markers stay with the bridge so only the bridge counts as the instance.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCPHOST_")}
    bridge = StdioBridge(
        command[0],
        command[1:],
        ns.path,
        env=env,
        report_oom=ns.report_oom,
        max_sessions=ns.max_sessions,
        idle_timeout=ns.idle_timeout,
    )
    # uvicorn turns SIGTERM/SIGINT into a graceful exit; sessions then close and stop their children.
    anyio.run(bridge.serve, ns.host, ns.port)
    if bridge.gave_up:
        raise SystemExit(3)


if __name__ == "__main__":
    main()
