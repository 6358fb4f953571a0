"""The client side of the `/mcp/{slug}` handler (gateway.proxy): how it reads its request's body and
answers, as a `Channel`. `AsgiChannel` is that over ASGI messages under any ASGI server; the gateway's own
server (gateway.server) gives the request's exchange itself, which does the same without messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, Protocol

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

WATCH_AFTER = 0.02  # seconds a forwarded request runs before the gateway watches for the client leaving


class BodyStalled(Exception):
    """The request body stopped arriving for longer than the channel's body timeout."""


class Disconnected(Exception):
    """The client went away."""


class Channel(Protocol):
    """How the handler reads its request's body and answers: `AsgiChannel` under any ASGI server, or the
    exchange of the gateway's own server (gateway.server), which does the same without ASGI messages."""

    async def read_body(self, limit: int) -> bytes | None:
        """The whole request body; None once it is larger than `limit`. Raises Disconnected."""
        ...

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole answer (its headers carry its content-length)."""
        ...

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        """The head of a streamed answer."""
        ...

    async def body(self, data: bytes, more: bool = True) -> None:
        """Bytes of a streamed answer; `more=False` ends it."""
        ...

    def watch(self, on_gone: Callable[[], None]) -> None:
        """Call `on_gone` if the client goes away, until `unwatch`."""
        ...

    # Whether `respond_now` can answer outside the request's task (from another protocol's callback).
    immediate: bool

    def respond_now(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """`respond`, done at once (only when `immediate`)."""
        ...

    def unwatch(self) -> None: ...

    def adopt(self, answer: Coroutine[Any, Any, None]) -> None:
        """Run `answer` as the task that finishes this request's answer (only when `immediate`)."""
        ...


class AsgiChannel:
    """`Channel` over ASGI receive/send."""

    __slots__ = ("receive", "send", "body_timeout", "_timer", "_watcher")
    immediate = False  # an ASGI send is a coroutine: it cannot answer from a callback

    def __init__(self, receive: Receive, send: Send, body_timeout: float | None = None) -> None:
        self.receive = receive
        self.send = send
        self.body_timeout = body_timeout  # longest wait for each piece of the request body (None: no limit)
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def read_body(self, limit: int) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            if self.body_timeout is None:
                message = await self.receive()
            else:
                # The ASGI server has no such bound: a client that sends a head and then stops sending its body
                # would hold the request for ever. The clock restarts with each piece, as in gateway.server.
                try:
                    async with asyncio.timeout(self.body_timeout):
                        message = await self.receive()
                except TimeoutError:
                    raise BodyStalled from None
            if message["type"] == "http.disconnect":
                raise Disconnected
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    return None
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})
        await self.send({"type": "http.response.body", "body": body})

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self.send({"type": "http.response.start", "status": status, "headers": headers})

    def respond_now(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        raise RuntimeError("an ASGI channel answers only from its task")

    def adopt(self, answer: Coroutine[Any, Any, None]) -> None:
        answer.close()
        raise RuntimeError("an ASGI channel answers only from its task")

    async def body(self, data: bytes, more: bool = True) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    def watch(self, on_gone: Callable[[], None]) -> None:
        # Most answers come back within milliseconds: a client gone by then costs one wasted answer at most,
        # so the watcher (a task of its own, reading ASGI messages) starts only once the request has taken
        # longer than that.
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER, self._start_watching, on_gone)

    def _start_watching(self, on_gone: Callable[[], None]) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch(on_gone))

    async def _watch(self, on_gone: Callable[[], None]) -> None:
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                on_gone()
                return

    def unwatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
