"""Accounts: log in (keeping a personal API token for the CLI) and register."""

from __future__ import annotations

import socket
from pathlib import Path

import typer

from cli.client import Api, console, load_config, save_config

app = typer.Typer()


@app.command()
def login(
    email: str = typer.Option(..., prompt=True),
    password: str = typer.Option(..., prompt=True, hide_input=True),
    url: str = typer.Option(None, envvar="MCPHOST_URL", help="API base URL (default http://127.0.0.1:3000)"),
) -> None:
    """Log in and keep a personal API token for the CLI in ~/.config/mcphost/config.json."""
    client = Api(url=url, token="")
    session = client.request("POST", "/api/login", json={"email": email, "password": password})
    authed = Api(url=client.url, token=session["access_token"])
    token = authed.request("POST", "/api/tokens", json={"name": f"cli on {socket.gethostname()}"[:100]})
    save_config({"url": client.url, "token": token["token"]})
    console.print(f"logged in to {client.url} as {email}")


@app.command()
def register(
    email: str = typer.Option(..., prompt=True),
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True),
    url: str = typer.Option(None, envvar="MCPHOST_URL"),
    setup_token_file: Path = typer.Option(
        None,
        "--setup-token-file",
        exists=True,
        dir_okay=False,
        help="Claim a new installation as its administrator with its one-time setup token "
        "(<STATE_DIR>/setup-token; `mcphost up` says where)",
    ),
) -> None:
    """Create an account, then log in. With --setup-token-file it is the installation's administrator."""
    client = Api(url=url, token="")
    body = {"email": email, "password": password}
    if setup_token_file is not None:
        body["setup_token"] = setup_token_file.read_text().strip()
    client.request("POST", "/api/register", json=body)
    # The answer does not say whether the email already had an account; logging in shows it is this one.
    login(email=email, password=password, url=client.url)
    me = Api(url=client.url, token=load_config()["token"]).request("GET", "/api/me")
    console.print(f"account: {me['email']} ({me['role']})")
    if me["role"] != "admin" and setup_token_file is None:
        console.print("(a new installation's administrator registers with --setup-token-file)")
