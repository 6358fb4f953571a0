"""An OCI distribution client: check reachability and credentials, read manifests, publish image
indexes, delete manifests.

Every connection, status code and credential challenge is seen and classified here: transient
(connection reset, timeout, 5xx, 429), authentication (401/403) or rejected (other 4xx, with the
registry's message). Image layers themselves are pushed by the engine (`builds.images`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from core.failures import PermanentFailure, RuntimeFailure

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT_MANIFESTS = ", ".join(
    [
        OCI_INDEX,
        OCI_MANIFEST,
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)


class RegistryError(RuntimeFailure):
    """A failure that may pass: the push is retried."""

    kind = "registry_error"

    def __init__(self, message: str, error_kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.error_kind = error_kind
        self.status = status


class RegistryAuthError(RegistryError):
    kind = "registry_auth"


class RegistryRejected(PermanentFailure):
    """The registry refused the request for a reason a retry will not change (other 4xx)."""

    kind = "registry_rejected"

    def __init__(self, message: str, error_kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.error_kind = error_kind
        self.status = status


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def auth_config(self) -> dict[str, str]:
        return {"username": self.username, "password": self.password}


def load_dockerconfig(path: Path, registry_host: str) -> Credentials | None:
    """Credentials for `registry_host` from a dockerconfigjson file (`auths.<host>.auth` or username/password)."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise RegistryRejected(
            f"credentials file {path} does not exist (REGISTRY_AUTH_DOCKERCONFIG)", "no_credentials"
        ) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RegistryRejected(
            f"credentials file {path} is not a readable dockerconfigjson: {exc}", "bad_credentials"
        ) from None
    auths = data.get("auths") if isinstance(data, dict) else None
    if not isinstance(auths, dict):
        raise RegistryRejected(f"credentials file {path} has no 'auths' object", "bad_credentials")
    for key in (registry_host, f"https://{registry_host}", f"http://{registry_host}", f"https://{registry_host}/v2/"):
        entry = auths.get(key)
        if not isinstance(entry, dict):
            continue
        if entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise RegistryRejected(
                    f"credentials for {registry_host} in {path} are not valid base64", "bad_credentials"
                ) from None
            return Credentials(user, password)
        if entry.get("username"):
            return Credentials(str(entry["username"]), str(entry.get("password", "")))
    return None


@dataclass
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: dict[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform:
            data["platform"] = self.platform
        return data


def _error_message(response: httpx.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors if isinstance(e, dict)]
        if parts:
            return "; ".join(parts)
    except (ValueError, AttributeError):
        pass
    return (response.text or response.reason_phrase or "").strip()[:300]


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    scheme, _, rest = header.partition(" ")
    params = dict(re.findall(r'(\w+)="([^"]*)"', rest))
    return scheme.lower(), params


class RegistryClient:
    """One registry endpoint (`host[:port]`), with credentials that can be swapped after a refresh."""

    def __init__(
        self,
        endpoint: str,
        *,
        credentials: Credentials | None,
        insecure: bool = False,
        timeout: float = 60.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.base = f"{'http' if insecure else 'https'}://{endpoint}"
        self.credentials = credentials
        self.timeout = timeout
        self._authorization: str | None = None
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)), transport=transport
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> RegistryClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- transport -----------------------------------------------------------------------------
    async def _send(
        self, method: str, url: str, *, headers: dict[str, str] | None = None, content: bytes | None = None
    ) -> httpx.Response:
        request_headers = dict(headers or {})
        if self._authorization:
            request_headers["Authorization"] = self._authorization
        try:
            return await self._client.request(method, url, headers=request_headers, content=content)
        except httpx.TimeoutException as exc:
            raise RegistryError(f"timed out talking to {self.endpoint}: {type(exc).__name__}", "timeout") from None
        except httpx.ConnectError as exc:
            raise RegistryError(f"cannot connect to {self.endpoint}: {exc}", "connect_error") from None
        except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError) as exc:
            raise RegistryError(
                f"connection to {self.endpoint} was reset: {exc or type(exc).__name__}", "connection_reset"
            ) from None
        except httpx.TransportError as exc:
            raise RegistryError(f"transport error talking to {self.endpoint}: {exc}", "transport_error") from None

    async def _authenticate(self, response: httpx.Response) -> bool:
        """Answer a 401 challenge; False when there is nothing (more) to try."""
        if self.credentials is None:
            return False
        scheme, params = _challenge(response.headers.get("www-authenticate", ""))
        basic = (
            "Basic " + base64.b64encode(f"{self.credentials.username}:{self.credentials.password}".encode()).decode()
        )
        if scheme == "basic":
            if self._authorization == basic:
                return False
            self._authorization = basic
            return True
        if scheme == "bearer" and params.get("realm"):
            query = {k: v for k, v in params.items() if k in ("service", "scope")}
            try:
                token_response = await self._client.get(params["realm"], params=query, headers={"Authorization": basic})
            except httpx.TransportError as exc:
                raise RegistryError(f"token service unreachable: {exc}", "connection_reset") from None
            if token_response.status_code in (401, 403):
                return False
            if token_response.status_code >= 400:
                raise RegistryError(f"token service answered {token_response.status_code}", "server_error")
            data = token_response.json()
            token = data.get("token") or data.get("access_token")
            if not token or self._authorization == f"Bearer {token}":
                return False
            self._authorization = f"Bearer {token}"
            return True
        return False

    async def request(
        self,
        method: str,
        path: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        ok: tuple[int, ...] = (200, 201, 202, 204),
        allow: tuple[int, ...] = (),
    ) -> httpx.Response:
        url = path if path.startswith("http") else f"{self.base}{path}"
        response = await self._send(method, url, headers=headers, content=content)
        if response.status_code == 401 and await self._authenticate(response):
            response = await self._send(method, url, headers=headers, content=content)
        status = response.status_code
        if status in ok or status in allow:
            return response
        message = _error_message(response)
        if status in (401, 403):
            who = f"as {self.credentials.username!r}" if self.credentials else "without credentials"
            raise RegistryAuthError(
                f"registry {self.endpoint} refused {method} {path.split('?')[0]} {who}: {status} {message}",
                "unauthorized" if status == 401 else "denied",
                status,
            )
        if status == 429 or status >= 500:
            raise RegistryError(
                f"registry {self.endpoint} answered {status} to {method}: {message}",
                "rate_limited" if status == 429 else "server_error",
                status,
            )
        raise RegistryRejected(
            f"registry {self.endpoint} rejected {method} {path.split('?')[0]}: {status} {message}", "rejected", status
        )

    # -- API -----------------------------------------------------------------------------------
    async def ping(self) -> None:
        """`GET /v2/`: reachable, and the credentials are accepted."""
        await self.request("GET", "/v2/")

    async def put_manifest(self, repo: str, reference: str, media_type: str, payload: bytes) -> str:
        response = await self.request(
            "PUT",
            f"/v2/{repo}/manifests/{reference}",
            headers={"Content-Type": media_type},
            content=payload,
            ok=(201, 202),
        )
        expected = "sha256:" + hashlib.sha256(payload).hexdigest()
        digest = response.headers.get("docker-content-digest", expected)
        if digest != expected:
            raise RegistryError(f"registry stored {digest} but the manifest is {expected}", "digest_mismatch")
        return digest

    async def get_manifest(self, repo: str, reference: str) -> tuple[Descriptor, dict[str, Any]] | None:
        """The manifest (or index) at a tag or digest: its descriptor and its JSON."""
        response = await self.request(
            "GET", f"/v2/{repo}/manifests/{reference}", headers={"Accept": ACCEPT_MANIFESTS}, allow=(404,)
        )
        if response.status_code == 404:
            return None
        digest = "sha256:" + hashlib.sha256(response.content).hexdigest()
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        return Descriptor(media_type or OCI_MANIFEST, digest, len(response.content)), response.json()

    async def delete_manifest(self, repo: str, digest: str) -> bool:
        response = await self.request("DELETE", f"/v2/{repo}/manifests/{digest}", ok=(202, 200), allow=(404,))
        return response.status_code != 404

    async def put_index(self, repo: str, tag: str, manifests: list[Descriptor]) -> tuple[str, int]:
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [m.to_json() for m in manifests]}
        payload = json.dumps(index, separators=(",", ":")).encode()
        digest = await self.put_manifest(repo, tag, OCI_INDEX, payload)
        return digest, len(payload)


def split_registry(registry: str) -> tuple[str, str]:
    """`host[:port][/namespace]` -> (endpoint, namespace)."""
    endpoint, _, namespace = registry.partition("/")
    return endpoint, namespace.strip("/")
