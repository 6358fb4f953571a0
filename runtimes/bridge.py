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
import os
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass

# Where the bridge serves MCP when --path is not given (the platform passes a secret path this way); the
# same name as runtimes.base.BRIDGE_PATH_ENV, repeated because this file must stand alone.
BRIDGE_PATH_ENV = "MCPHOST_BRIDGE_PATH"
# Limits of the bridge, set by the platform (BRIDGE_MAX_SESSIONS, BRIDGE_IDLE_TIMEOUT_SECONDS).
MAX_SESSIONS_ENV = "MCPHOST_BRIDGE_MAX_SESSIONS"
IDLE_SECONDS_ENV = "MCPHOST_BRIDGE_IDLE_SECONDS"
# Where a child started with --env-via-fd finds its descriptor (runtimes.sandbox.ENV_FD_ENV, repeated).
SERVER_ENV_FD_ENV = "MCPHOST_SERVER_ENV_FD"


def _parser() -> argparse.ArgumentParser:
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
    parser.add_argument(
        "--no-prestart",
        action="store_true",
        help="start each session's child only when the session opens (by default the first one is started "
        "with the bridge, so the server's start-up overlaps the bridge's own)",
    )
    parser.add_argument(
        "--env-fd",
        type=int,
        help="a descriptor holding the server's config env (a JSON object), read once at start; the bridge's "
        "own environment stays the one its starter built",
    )
    parser.add_argument(
        "--env-via-fd",
        action="store_true",
        help=f"hand the server's env to each child on a descriptor named in ${SERVER_ENV_FD_ENV} instead of "
        "in its environment (the child is the sandbox launcher, which applies it after dropping privileges)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- command [args...] of the stdio server")
    return parser


def child_env() -> dict[str, str]:
    """What every child gets: the bridge's environment without the platform's markers (so only the bridge
    counts as the instance)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("MCPHOST_")}


def read_server_env(fd: int) -> dict[str, str]:
    """The server's config env from the descriptor its starter passed (read from the start, so the prestart
    and the bridge proper can both read it)."""
    chunks = []
    offset = 0
    while chunk := os.pread(fd, 1 << 16, offset):
        chunks.append(chunk)
        offset += len(chunk)
    env = json.loads(b"".join(chunks))
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError("the server environment must be a JSON object of strings")
    return env


@dataclass
class ChildEnv:
    """How each child gets the server's environment: in its own environment (an unsandboxed server), or on a
    descriptor for the sandbox launcher (so that no privileged process ever has it in its environment)."""

    server: dict[str, str] | None = None
    via_fd: bool = False

    def spawn(self, command: list[str]) -> subprocess.Popen[bytes]:
        if self.server is None:
            return spawn_child(command, child_env())
        if not self.via_fd:
            return spawn_child(command, child_env() | self.server)
        fd = os.memfd_create("mcphost-env")
        try:
            os.write(fd, json.dumps(self.server).encode())
            os.lseek(fd, 0, os.SEEK_SET)
            return spawn_child(command, child_env() | {SERVER_ENV_FD_ENV: str(fd)}, pass_fds=(fd,))
        finally:
            os.close(fd)


def spawn_child(command: list[str], env: dict[str, str], pass_fds: tuple[int, ...] = ()) -> subprocess.Popen[bytes]:
    """A stdio server as the SDK's stdio client starts one: pipes for stdin/stdout, stderr to the log, its own
    process group (so it can be stopped whole)."""
    return subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        start_new_session=True,
        close_fds=True,
        pass_fds=pass_fds,
    )


def _child_env(ns: argparse.Namespace) -> ChildEnv:
    return ChildEnv(server=read_server_env(ns.env_fd) if ns.env_fd is not None else None, via_fd=ns.env_via_fd)


def _prestart(argv: list[str]) -> tuple[subprocess.Popen[bytes] | None, socket.socket | None]:
    try:
        ns = _parser().parse_args(argv)
    except SystemExit:
        return None, None  # main() reports the usage error
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command or shutil.which(command[0]) is None:
        return None, None
    listener = None
    try:
        # Listening at once: a client that connects while the bridge is still starting waits in the
        # backlog instead of being refused and retrying.
        listener = socket.create_server((ns.host, ns.port), backlog=128)
    except OSError:
        pass  # uvicorn binds it below and reports why it cannot
    child = None
    if not ns.no_prestart:
        try:
            child = _child_env(ns).spawn(command)
        except (OSError, ValueError):
            pass
    return child, listener


# The first session's child starts here, before the MCP SDK is imported below (most of the bridge's own
# start-up, 0.7 s or more): the server's start overlaps it instead of following it. Only when run as a
# program; importing this module starts nothing.
_PRESTARTED, _LISTENER = _prestart(sys.argv[1:]) if __name__ == "__main__" else (None, None)

import asyncio  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping  # noqa: E402
from contextlib import AsyncExitStack, asynccontextmanager  # noqa: E402
from dataclasses import field  # noqa: E402
from typing import Any  # noqa: E402
from uuid import uuid4  # noqa: E402

import anyio  # noqa: E402
import mcp.types as mcp_types  # noqa: E402
import uvicorn  # noqa: E402
from anyio.abc import TaskGroup  # noqa: E402
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream  # noqa: E402
from mcp.server.streamable_http import StreamableHTTPServerTransport  # noqa: E402
from mcp.shared.message import SessionMessage  # noqa: E402

log = logging.getLogger("mcphost.bridge")

# The memory cgroup of a container, as its processes see it (cgroup v2, then v1).
_OOM_COUNTERS = (("/sys/fs/cgroup/memory.events", "oom_kill"), ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"))
_MEMORY_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MAX_BODY = 4 * 1024 * 1024
MAX_EARLY_EXITS = 3
# The longest line (one JSON-RPC message) read from a prestarted child.
MAX_LINE = 64 * 1024 * 1024
# The SDK's stdio shutdown: stdin closed, then this long to exit, then SIGTERM to the group, then SIGKILL.
_EXIT_GRACE = 2.0


def _group_signal(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # its own session: the group id is its pid
    except (ProcessLookupError, PermissionError):
        pass


async def _exited(proc: subprocess.Popen[bytes], within: float) -> bool:
    deadline = time.monotonic() + within
    while proc.poll() is None:
        if time.monotonic() >= deadline:
            return False
        await anyio.sleep(0.01)
    return True


async def stop_child(proc: subprocess.Popen[bytes]) -> None:
    """End a child as the SDK's stdio client does: stdin closed, a grace period, then the whole group."""
    if proc.stdin is not None and not proc.stdin.closed:
        try:
            proc.stdin.close()
        except OSError:
            pass
    if not await _exited(proc, _EXIT_GRACE):
        _group_signal(proc, signal.SIGTERM)
        if not await _exited(proc, _EXIT_GRACE):
            _group_signal(proc, signal.SIGKILL)
            await _exited(proc, _EXIT_GRACE)
    # Descendants left in the group (the child gone first) are stopped too.
    _group_signal(proc, signal.SIGKILL)


@asynccontextmanager
async def adopted_stdio(
    proc: subprocess.Popen[bytes],
) -> AsyncIterator[
    tuple[MemoryObjectReceiveStream[SessionMessage | Exception], MemoryObjectSendStream[SessionMessage]]
]:
    """The SDK's stdio client transport over a child that is already running (the prestarted one): the
    same message streams, the same newline-delimited JSON-RPC, the same shutdown."""
    assert proc.stdin is not None and proc.stdout is not None
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    read_transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), proc.stdout)
    write_transport, write_protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, proc.stdin)
    writer = asyncio.StreamWriter(write_transport, write_protocol, None, loop)
    to_session, from_child = anyio.create_memory_object_stream[SessionMessage | Exception](0)
    to_child, from_session = anyio.create_memory_object_stream[SessionMessage](0)

    async def child_to_session() -> None:
        async with to_session:
            while True:
                try:
                    line = await reader.readline()
                except (ValueError, OSError) as exc:  # a line past MAX_LINE, or the pipe gone
                    log.warning("reading the server's output failed: %s", exc)
                    return
                if not line:
                    return
                if not line.strip():
                    continue
                try:
                    item: SessionMessage | Exception = SessionMessage(
                        mcp_types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                    )
                except ValueError as exc:
                    item = exc
                try:
                    await to_session.send(item)
                except (anyio.ClosedResourceError, anyio.BrokenResourceError):
                    return

    async def session_to_child() -> None:
        try:
            async with from_session:
                async for message in from_session:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    writer.write(data.encode() + b"\n")
                    await writer.drain()
        except (anyio.ClosedResourceError, anyio.BrokenResourceError, OSError):
            await to_session.aclose()

    async with anyio.create_task_group() as tg:
        tg.start_soon(child_to_session)
        tg.start_soon(session_to_child)
        try:
            yield from_child, to_child
        finally:
            with anyio.CancelScope(shield=True):
                from_child.close()
                to_child.close()
                write_transport.close()
                await stop_child(proc)
                read_transport.close()
            tg.cancel_scope.cancel()


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
        child: ChildEnv | None = None,
        *,
        report_oom: bool = False,
        max_sessions: int = 32,
        idle_timeout: float = 600.0,
        prestarted: subprocess.Popen[bytes] | None = None,
    ) -> None:
        self.command = [command, *args]
        self.child = child or ChildEnv()
        # A child started before the bridge was ready, waiting for the first session (see _PRESTARTED).
        self.prestarted = prestarted
        self._prestarted_at = time.monotonic()
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
            spare = self.prestarted
            if spare is not None and time.monotonic() - self._prestarted_at > self.idle_timeout:
                # Nobody came for it: it goes the way of an idle session.
                self.prestarted = None
                log.info("the prestarted server was not used for %.0f s; stopping it", self.idle_timeout)
                await stop_child(spare)

    def _take_prestarted(self) -> subprocess.Popen[bytes] | None:
        spare, self.prestarted = self.prestarted, None
        if spare is not None and spare.poll() is not None:
            # It died waiting (its output is in the log above); the session starts its own, which will
            # say the same and be counted as an early exit.
            log.warning("the prestarted server exited with code %s before its first session", spare.returncode)
            return None
        return spare

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
                spare = self._take_prestarted()
                try:
                    child_read, child_write = await stack.enter_async_context(
                        # Started here rather than by the SDK's stdio client, which cannot hand a child a
                        # descriptor (the server's environment travels on one).
                        adopted_stdio(spare if spare is not None else self.child.spawn(self.command))
                    )
                except OSError as exc:
                    session.failed = f"could not start {self.command[0]}: {exc}"
                    log.error(session.failed)
                    return
                log.info("session %s: started %s", sid, self.command[0])
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
            try:
                await server.serve(sockets=sockets)
            finally:
                spare, self.prestarted = self.prestarted, None
                if spare is not None:
                    with anyio.CancelScope(shield=True):
                        await stop_child(spare)
            tg.cancel_scope.cancel()


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    ns = parser.parse_args(argv)
    command = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not command:
        parser.error("missing the stdio server command after --")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bridge %(levelname)s %(message)s", stream=sys.stderr)
    if shutil.which(command[0]) is None:
        log.error("command not found: %s", command[0])
        raise SystemExit(127)
    try:
        child = _child_env(ns)
    except (OSError, ValueError) as exc:
        log.error("cannot read the server's environment from descriptor %s: %s", ns.env_fd, exc)
        raise SystemExit(2) from None
    if ns.env_fd is not None:
        os.close(ns.env_fd)
    bridge = StdioBridge(
        command[0],
        command[1:],
        ns.path,
        child,
        report_oom=ns.report_oom,
        max_sessions=ns.max_sessions,
        idle_timeout=ns.idle_timeout,
        prestarted=_PRESTARTED if argv is None else None,
    )
    # uvicorn turns SIGTERM/SIGINT into a graceful exit; sessions then close and stop their children.
    listener = _LISTENER if argv is None else None
    anyio.run(bridge.serve, ns.host, ns.port, [listener] if listener is not None else None)
    if bridge.gave_up:
        raise SystemExit(3)


if __name__ == "__main__":
    main()
