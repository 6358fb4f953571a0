"""An `http` remediation step calls only public endpoints unless REMEDIATION_ALLOW_PRIVATE_URLS is set:
with the guard on, a playbook pointed at a loopback service is refused before anything is sent (the
service sees no request); with it off, the same step reaches the service, with its Idempotency-Key."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from activities.remediation import RemediationActivities, StepInput
from core.remediation import HttpStep
from tests.support.stack import make_settings


@pytest.fixture
def local_service() -> Iterator[tuple[str, list[dict[str, str]]]]:
    seen: list[dict[str, str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - the http.server API
            self.rfile.read(int(self.headers.get("content-length", "0")))
            seen.append(dict(self.headers))
            self.send_response(200)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("allow_private", [False, True])
async def test_http_step_to_a_private_address(
    allow_private: bool, local_service: tuple[str, list[dict[str, str]]], tmp_path: Path
) -> None:
    url, seen = local_service
    settings = make_settings(
        "postgresql+asyncpg://unused/unused", "127.0.0.1:1", tmp_path, remediation_allow_private_urls=allow_private
    )
    activities = RemediationActivities(None, settings)  # type: ignore[arg-type]  # no database needed here
    step = HttpStep.model_validate({"kind": "http", "name": "page", "url": url})
    data = StepInput(run_id="run-1", server_id="server-1", index=2, step=step.model_dump(mode="json"))
    result = await activities._http(data, step)
    if allow_private:
        assert result.ok, result
        assert len(seen) == 1 and seen[0]["Idempotency-Key"] == "remediation-run-1-2"
    else:
        assert not result.ok and result.reason == "step_failed:http:url-refused", result
        assert "REMEDIATION_ALLOW_PRIVATE_URLS" in result.detail and "GIT_" not in result.detail, result.detail
        # https is not enough: the host must resolve to public addresses only.
        loopback = HttpStep.model_validate({"kind": "http", "name": "page", "url": "https://127.0.0.1:9/hook"})
        refused = await activities._http(data, loopback)
        assert refused.reason == "step_failed:http:url-refused" and "not a public address" in refused.detail
        assert seen == []  # nothing was sent
