"""`mcphost keys`: a server's named gateway keys."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.client import Api, console, err

app = typer.Typer(help="A server's named gateway keys: list, create (shown once), revoke.", no_args_is_help=True)


@app.command("list")
def keys_list(
    server: str = typer.Argument(..., help="id, slug or name"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """The server's named keys (values are never shown again), revoked ones included."""
    client = Api()
    found = client.resolve_server(server)
    listing = client.request("GET", f"/api/servers/{found['id']}/keys")
    if as_json:
        console.print_json(data=listing)
        return
    table = Table("name", "prefix", "tools", "expires", "revoked")
    for key in listing["data"]:
        tools = ", ".join(key["tools"]) if key["tools"] is not None else "all"
        table.add_row(
            escape(key["name"]),
            key["prefix"],
            escape(tools),
            (key["expires_at"] or "never")[:19],
            (key["revoked_at"] or "")[:19],
        )
    console.print(table)


@app.command("create")
def keys_create(
    server: str = typer.Argument(..., help="id, slug or name"),
    name: str = typer.Argument(..., help="A name unique among the server's live keys"),
    tool: list[str] = typer.Option(None, "--tool", help="Allow only this tool (repeat for more); default: all"),
    expires_in_days: float = typer.Option(None, "--expires-in-days", help="Expire after this many days"),
) -> None:
    """Create a gateway key; it is printed once."""
    client = Api()
    found = client.resolve_server(server)
    body: dict[str, Any] = {"name": name}
    if tool:
        body["tools"] = tool
    if expires_in_days is not None:
        body["expires_in_days"] = expires_in_days
    created = client.request("POST", f"/api/servers/{found['id']}/keys", json=body)
    console.print(f"key {escape(created['name'])!r} for {escape(found['slug'])} (shown once, keep it):")
    console.print(created["api_key"], markup=False, highlight=False)


@app.command("revoke")
def keys_revoke(
    server: str = typer.Argument(..., help="id, slug or name"),
    name: str = typer.Argument(..., help="The key's name (or id)"),
) -> None:
    """Revoke a key: it stops working at once on every gateway process."""
    client = Api()
    found = client.resolve_server(server)
    listing = client.request("GET", f"/api/servers/{found['id']}/keys")["data"]
    match = [k for k in listing if k["revoked_at"] is None and name in (k["name"], k["id"])]
    if not match:
        err.print(f"[red]no live key named {escape(name)!r} on {escape(found['slug'])}[/]")
        raise typer.Exit(1)
    client.request("DELETE", f"/api/servers/{found['id']}/keys/{match[0]['id']}")
    console.print(f"revoked {escape(match[0]['name'])!r}")
