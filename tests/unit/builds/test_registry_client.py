"""How registry answers are sorted into retry, refresh-credentials or give-up, and how credential
challenges are answered. The HTTP exchanges follow the distribution spec's documented shapes."""

from __future__ import annotations

import base64
import hashlib
import json

import httpx
import pytest

from builds.images import classify_push_error
from builds.registry import Credentials, RegistryAuthError, RegistryClient, RegistryError, RegistryRejected

BASIC = "Basic " + base64.b64encode(b"robot:s3cret").decode()


ROBOT = Credentials("robot", "s3cret")


def client(handler: object, credentials: Credentials | None = ROBOT) -> RegistryClient:
    return RegistryClient(
        "reg.example.com",
        credentials=credentials,
        transport=httpx.MockTransport(handler),  # type: ignore[arg-type]
    )


def errors(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()


@pytest.mark.parametrize(
    ("status", "kind", "transient"),
    [(500, "server_error", True), (503, "server_error", True), (429, "rate_limited", True), (404, "rejected", False)],
)
async def test_status_codes_are_sorted(status: int, kind: str, transient: bool) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=errors("NAME_UNKNOWN", "repository name not known to registry"))

    async with client(handler) as registry:
        with pytest.raises(RegistryError if transient else RegistryRejected) as info:
            await registry.ping()
    error = info.value
    assert isinstance(error, RegistryError | RegistryRejected) and error.error_kind == kind
    assert "repository name not known to registry" in error.message


async def test_transport_failures_are_transient() -> None:
    def reset(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset by peer")

    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    for handler, kind in ((reset, "connection_reset"), (slow, "timeout")):
        async with client(handler) as registry:
            with pytest.raises(RegistryError) as info:
                await registry.ping()
        assert not isinstance(info.value, RegistryAuthError) and info.value.error_kind == kind


async def test_basic_challenge_is_answered_once_then_refused() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.headers.get("authorization") == BASIC:
            return httpx.Response(200, json={})
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'}, content=errors("UNAUTHORIZED", "x"))

    async with client(handler) as registry:
        await registry.ping()
    assert seen == [None, BASIC]

    async with client(handler, Credentials("robot", "wrong")) as registry:
        with pytest.raises(RegistryAuthError) as info:
            await registry.ping()
    assert info.value.error_kind == "unauthorized" and "as 'robot'" in info.value.message


async def test_bearer_token_flow() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.host == "auth.example.com":
            assert request.headers["authorization"] == BASIC
            assert request.url.params["scope"] == "repository:team/x:pull,push"
            return httpx.Response(200, json={"token": "tok-1"})
        if request.headers.get("authorization") == "Bearer tok-1":
            body = b'{"schemaVersion": 2}'
            return httpx.Response(
                200, content=body, headers={"Content-Type": "application/vnd.oci.image.index.v1+json"}
            )
        challenge = 'Bearer realm="https://auth.example.com/token",service="reg",scope="repository:team/x:pull,push"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    async with client(handler) as registry:
        found = await registry.get_manifest("team/x", "v1")
    assert found is not None
    descriptor, manifest = found
    assert descriptor.media_type == "application/vnd.oci.image.index.v1+json" and manifest == {"schemaVersion": 2}
    assert descriptor.digest == "sha256:" + hashlib.sha256(b'{"schemaVersion": 2}').hexdigest()


@pytest.mark.parametrize(
    ("message", "kind", "error_type"),
    [
        ("trying to reuse blob: unauthorized: authentication required", "unauthorized", RegistryAuthError),
        ("denied: requested access to the resource is denied", "denied", RegistryAuthError),
        ("writing blob: Patch http://r/v2/x/blobs/uploads/1: read: connection reset by peer", "connection_reset",
         RegistryError),
        ("dial tcp 127.0.0.1:5000: connect: connection refused", "connect_error", RegistryError),
        ("net/http: TLS handshake timeout", "timeout", RegistryError),
        ("received unexpected HTTP status: 502 Bad Gateway", "server_error", RegistryError),
        ("toomanyrequests: rate limit", "rate_limited", RegistryError),
        ("manifest invalid: manifest invalid", "rejected", RegistryRejected),
    ],
)  # fmt: skip
def test_engine_push_errors_are_sorted_like_http_ones(message: str, kind: str, error_type: type) -> None:
    error = classify_push_error(message)
    assert type(error) is error_type and error.error_kind == kind and error.message == message
