"""The CLI's side of the API: the personal token in its config file, the HTTP client, server-sent events."""

from __future__ import annotations

import json
import os
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console

console = Console()
err = Console(stderr=True)


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mcphost" / "config.json"


def load_config() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {}
    owner_only(path)
    return json.loads(path.read_text())


def owner_only(path: Path) -> None:
    """Take group and other permissions away from a file or directory that holds a credential."""
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            path.chmod(mode & 0o700)
    except OSError:
        pass  # not ours to change (a shared config mounted read-only): the token still works


def save_config(data: dict[str, Any]) -> None:
    """Keep the CLI's personal API token readable by this user alone: 0700 directory, 0600 file."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner_only(path.parent)
    # Written beside the file and renamed over it: an existing file keeps its mode when truncated, and a
    # reader never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)  # a leftover temporary file would keep its old mode
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Api:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        config = load_config()
        self.url = (url or os.environ.get("MCPHOST_URL") or config.get("url") or "http://127.0.0.1:3000").rstrip("/")
        self.token = token or os.environ.get("MCPHOST_TOKEN") or config.get("token")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.unreachable(exc)
        self.check(response)
        return response.json() if response.content else None

    def unreachable(self, exc: httpx.HTTPError) -> NoReturn:
        err.print(f"[red]cannot reach MCP Host at {self.url}:[/] {exc}\nIs it running? (make up)")
        raise typer.Exit(2) from None

    def check(self, response: httpx.Response) -> None:
        """Exit with the API's reason when the response is an error (a streamed one is read first)."""
        if response.status_code >= 400 and not response.is_stream_consumed:
            response.read()
        if response.status_code == 401:
            err.print("[red]not logged in or session expired:[/] run `mcphost login`")
            raise typer.Exit(2)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            if isinstance(detail, list):
                detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
            err.print(f"[red]error {response.status_code}:[/] {detail}")
            raise typer.Exit(1)

    def resolve_server(self, ref: str) -> dict[str, Any]:
        """A server by id, slug or name."""
        servers = self.request("GET", "/api/servers")["data"]
        for server in servers:
            if ref in (server["id"], server["slug"], server["name"]):
                return server  # type: ignore[no-any-return]
        err.print(f"[red]no server {ref!r}[/] (see `mcphost servers list`)")
        raise typer.Exit(1)


def sse_events(client: Api, path: str, params: dict[str, Any] | None = None) -> Iterator[tuple[str, Any]]:
    """Events of a server-sent event stream, until the server ends it (or Ctrl-C)."""
    try:
        with client.http.stream("GET", path, params=params, timeout=httpx.Timeout(10.0, read=None)) as response:
            if response.status_code != 200:
                response.read()
                client.check(response)
            name, data = "message", []
            for line in response.iter_lines():
                if line.startswith("event:"):
                    name = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    data.append(line.partition(":")[2].strip())
                elif not line and data:
                    yield name, json.loads("\n".join(data))
                    name, data = "message", []
    except httpx.HTTPError as exc:
        client.unreachable(exc)


def sse_lines(client: Api, path: str, timeout: httpx.Timeout) -> Generator[tuple[str, str | None], None, None]:
    """Each line of a server-sent event stream as it arrives: the name of the event it belongs to and the
    text of its data (None for a line carrying none). Nothing when the stream answers other than 200;
    transport errors are the caller's, which can fall back to polling."""
    with client.http.stream("GET", path, timeout=timeout) as response:
        if response.status_code != 200:
            return
        event = ""
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.partition(":")[2].strip()
                yield event, None
            elif line.startswith("data:"):
                yield event, line.partition(":")[2]
            else:
                yield event, None
