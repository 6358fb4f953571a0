"""`mcphost secrets`: a server's write-only secrets, their audit trail, and resealing them."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from cli.client import Api, console, err

app = typer.Typer(
    help="Server secrets (write-only env values, sealed or in Vault) and the sealing key.", no_args_is_help=True
)


@app.command("reseal")
def secrets_reseal() -> None:
    """Re-encrypt every stored config env and webhook secret with the first SECRETS_KEY (after adding a
    new key first); also seals what was written in clear by older versions."""
    import asyncio

    from core.crypto import SecretsKeyError, reseal_all
    from core.settings import load_settings_or_exit

    settings = load_settings_or_exit()
    try:
        servers, deployments = asyncio.run(reseal_all(settings.database_url, settings.env_cipher()))
    except SecretsKeyError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    err.print(f"resealed the secrets of {servers} server(s) and the env of {deployments} deployment(s)")


@app.command("set")
def secrets_set(
    server: str = typer.Argument(..., help="id, slug or name"),
    name: str = typer.Argument(..., help="Environment variable name the server gets it as"),
) -> None:
    """Create or rotate a secret. The value is read from stdin (or asked for, hidden) so it stays out of
    the shell history; the server gets it at its next launch."""
    import sys

    value = sys.stdin.read().removesuffix("\n") if not sys.stdin.isatty() else typer.prompt("value", hide_input=True)
    client = Api()
    found = client.resolve_server(server)
    base = f"/api/servers/{found['id']}/secrets"
    names = {s["name"] for s in client.request("GET", base)["data"]}
    if name in names:
        done = client.request("PUT", f"{base}/{name}", json={"value": value})
        err.print(f"secret {escape(name)} rotated (version {done['version']}); redeploy to hand it out")
    else:
        done = client.request("POST", base, json={"name": name, "value": value})
        err.print(f"secret {escape(name)} created ({done['backend']}); the next launch gets it")


@app.command("list")
def secrets_list(
    server: str = typer.Argument(..., help="id, slug or name"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """The server's secrets: names, where kept, versions. Values are never shown."""
    client = Api()
    found = client.resolve_server(server)
    listing = client.request("GET", f"/api/servers/{found['id']}/secrets")
    if as_json:
        console.print_json(data=listing)
        return
    table = Table("name", "backend", "version", "vault path", "updated")
    for secret in listing["data"]:
        table.add_row(
            escape(secret["name"]),
            secret["backend"],
            str(secret["version"]),
            escape(secret["vault_path"] or ""),
            secret["updated_at"][:19],
        )
    console.print(table)


@app.command("rm")
def secrets_rm(
    server: str = typer.Argument(..., help="id, slug or name"),
    name: str = typer.Argument(..., help="The secret's name"),
) -> None:
    """Delete a secret (in Vault: every version). Running instances keep it until their next launch."""
    client = Api()
    found = client.resolve_server(server)
    client.request("DELETE", f"/api/servers/{found['id']}/secrets/{name}")
    err.print(f"secret {escape(name)} deleted")


@app.command("events")
def secrets_events(
    server: str = typer.Argument(..., help="id, slug or name"),
    name: str = typer.Option(None, "--name", help="Only this secret"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Who created, rotated or deleted the server's secrets, and which launches read them."""
    client = Api()
    found = client.resolve_server(server)
    params = {"name": name} if name else None
    listing = client.request("GET", f"/api/servers/{found['id']}/secret-events", params=params)
    if as_json:
        console.print_json(data=listing)
        return
    table = Table("at", "name", "action", "version", "by", "deployment")
    for event in listing["data"]:
        table.add_row(
            event["at"][:19],
            escape(event["name"]),
            event["action"],
            str(event["version"] or ""),
            escape(event["actor"]),
            event["deployment_id"] or "",
        )
    console.print(table)
