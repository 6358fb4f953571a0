"""Live SSE streams read by a real HTTP client: a server's log lines, and the status of every server the
caller can see. Another user's streams are 404 or do not show the server."""

from __future__ import annotations

from typing import Any

from api.routes.streams import new_lines
from tests.integration.api.test_lifecycle import create_time_server
from tests.support.sse import EventStream
from tests.support.stack import Stack, deploy


async def test_log_stream_sends_the_tail_then_new_lines_and_is_private(stack: Stack) -> None:
    client, _ = await stack.user()
    other, _ = await stack.user()
    async with client, other:
        server = await create_time_server(client)
        sid = server["id"]
        done = await deploy(client, sid)
        assert done["status"] == "running", done
        async with EventStream(client, f"/api/servers/{sid}/logs/stream", tail=50) as stream:
            assert stream.status == 200
            name, line = await stream.until(lambda n, d: "serving revision" in d.get("message", ""))
            assert name == "log" and line["source"] == "platform"
            # A line written now, by another request, arrives on the open stream.
            assert (await client.post(f"/api/servers/{sid}/webhook-secret")).status_code == 200
            _, rotated = await stream.until(lambda n, d: "webhook secret rotated" in d.get("message", ""))
            assert rotated["deployment_id"] is None
        async with EventStream(other, f"/api/servers/{sid}/logs/stream") as foreign:
            assert foreign.status == 404
        async with EventStream(other, f"/api/servers/{sid}/metrics/stream") as foreign:
            assert foreign.status == 404
        assert (await client.post(f"/api/servers/{sid}/stop")).status_code == 202


async def test_server_stream_follows_every_status_change_of_the_callers_servers_only(stack: Stack) -> None:
    client, _ = await stack.user()
    other, _ = await stack.user()
    async with client, other:
        theirs = await create_time_server(other)
        async with (
            EventStream(client, "/api/servers/stream") as mine,
            EventStream(other, "/api/servers/stream") as foreign,
        ):
            assert mine.status == foreign.status == 200
            # The other user's snapshot holds their server.
            await foreign.until(lambda n, d: d["id"] == theirs["id"])
            server = await create_time_server(client)

            def about(status: str) -> Any:
                return lambda n, d: n == "server" and d["id"] == server["id"] and d["status"] == status

            await mine.until(about("created"))
            done = await deploy(client, server["id"])
            assert done["status"] == "running"
            await mine.until(about("deploying"))
            await mine.until(about("running"))
            assert (await client.post(f"/api/servers/{server['id']}/stop")).status_code == 202
            await mine.until(about("stopped"))
            # Meanwhile the other user's stream saw nothing of this server.
            seen = []
            while not foreign.events.empty():
                seen.append(foreign.events.get_nowait()[1]["id"])
            assert server["id"] not in seen


def test_new_lines_of_a_growing_tail() -> None:
    assert new_lines([], ["a", "b"]) == ["a", "b"]
    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert new_lines(["a", "b"], ["a", "b"]) == []
    assert new_lines(["x"], ["y", "z"]) == ["y", "z"]
