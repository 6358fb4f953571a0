"""`mcphost files`: the files in a server's /data."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from cli.client import Api, console, err

app = typer.Typer(help="List, upload, download and delete the files in a server's /data.", no_args_is_help=True)


def _files_url(server_id: str, remote: str = "") -> str:
    base = f"/api/servers/{server_id}/files"
    return f"{base}/{quote(remote.lstrip('/'), safe='/')}" if remote else base


@app.command("ls")
def files_ls(
    server: str = typer.Argument(..., help="id, slug or name"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """List the files in the server's /data."""
    client = Api()
    found = client.resolve_server(server)
    listing = client.request("GET", _files_url(found["id"]))
    if as_json:
        console.print_json(data=listing)
        return
    table = Table("path", "bytes", "modified")
    for item in listing["data"]:
        table.add_row(escape(item["path"]), str(item["size"]), item["modified_at"][:19])
    console.print(table)
    console.print(f"{listing['total_bytes']} of {listing['quota_bytes']} bytes used")


@app.command("put")
def files_put(
    server: str = typer.Argument(..., help="id, slug or name"),
    local: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="File to upload"),
    remote: str = typer.Argument(None, help="Path under /data (default: the file's name)"),
) -> None:
    """Upload a file to the server's /data, replacing any file at that path."""
    client = Api()
    found = client.resolve_server(server)
    with local.open("rb") as fh:
        stored = client.request(
            "POST",
            _files_url(found["id"], remote or local.name),
            content=fh,
            headers={"Content-Type": "application/octet-stream"},
            timeout=httpx.Timeout(30.0, write=None),
        )
    console.print(f"stored /data/{escape(stored['path'])} ({stored['size']} bytes)")


@app.command("get")
def files_get(
    server: str = typer.Argument(..., help="id, slug or name"),
    remote: str = typer.Argument(..., help="Path under /data"),
    output: Path = typer.Option(None, "--output", "-o", help="Where to write it (default: its name; - for stdout)"),
) -> None:
    """Download a file from the server's /data."""
    client = Api()
    found = client.resolve_server(server)
    target = output or Path(remote.rstrip("/").rsplit("/", 1)[-1])
    try:
        with client.http.stream("GET", _files_url(found["id"], remote), timeout=httpx.Timeout(30.0, read=None)) as r:
            client.check(r)
            if str(target) == "-":
                out = typer.get_binary_stream("stdout")
                for chunk in r.iter_bytes():
                    out.write(chunk)
                out.flush()
                return
            # Written beside the target and renamed over it, so a failed download leaves no half file.
            tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
            try:
                with tmp.open("wb") as fh:
                    for chunk in r.iter_bytes():
                        fh.write(chunk)
                tmp.replace(target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    except httpx.HTTPError as exc:
        client.unreachable(exc)
    err.print(f"wrote {escape(str(target))}")


@app.command("rm")
def files_rm(
    server: str = typer.Argument(..., help="id, slug or name"),
    remote: str = typer.Argument(..., help="Path under /data: a file, or an empty directory"),
) -> None:
    """Delete a file (or an empty directory) from the server's /data."""
    client = Api()
    found = client.resolve_server(server)
    client.request("DELETE", _files_url(found["id"], remote))
    console.print(f"deleted /data/{escape(remote)}")
