"""`mcphost admin`: administrators made on the platform's host, straight in the database."""

from __future__ import annotations

import typer
from rich.markup import escape

from cli.client import console, err

app = typer.Typer(
    help="Make administrators on the platform's host (reads DATABASE_URL; needs no account).", no_args_is_help=True
)


def _read_new_password() -> str:
    """From stdin when it is not a terminal (its first line), else a hidden prompt asked twice."""
    import sys

    if sys.stdin.isatty():
        password: str = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    else:
        password = sys.stdin.readline().removesuffix("\n")
    if not 12 <= len(password) <= 1024:
        err.print("[red]the password must have 12 to 1024 characters[/]")
        raise typer.Exit(2)
    return password


def _admin_email(email: str) -> str:
    from pydantic import EmailStr, TypeAdapter, ValidationError

    try:
        return TypeAdapter(EmailStr).validate_python(email.strip()).lower()
    except ValidationError:
        err.print(f"[red]not an email address:[/] {escape(email)}")
        raise typer.Exit(2) from None


@app.command("create")
def admin_create(email: str = typer.Option(..., help="The new administrator's email")) -> None:
    """Create an administrator account (the password from stdin, or a hidden prompt). Claims a new
    installation without its setup token, which stops working."""
    import asyncio

    from core.settings import load_settings_or_exit
    from records.setup_tokens import create_admin

    settings = load_settings_or_exit()
    address = _admin_email(email)
    password = _read_new_password()
    try:
        created = asyncio.run(create_admin(settings, address, password))
    except Exception as exc:
        err.print(f"[red]cannot reach the database:[/] {exc}")
        raise typer.Exit(1) from None
    if not created:
        err.print(
            f"[red]{escape(address)} already has an account.[/] `mcphost admin promote --email {escape(address)}` "
            "makes it an administrator as it is: whoever knows its password, or holds its sessions and tokens, "
            "administers the installation."
        )
        raise typer.Exit(1)
    console.print(f"administrator created: {escape(address)}")


@app.command("promote")
def admin_promote(email: str = typer.Option(..., help="The email of the account to make an administrator")) -> None:
    """Make an existing account an administrator, keeping its password, sessions and tokens."""
    import asyncio

    from core.settings import load_settings_or_exit
    from records.setup_tokens import promote_admin

    settings = load_settings_or_exit()
    address = _admin_email(email)
    try:
        promoted = asyncio.run(promote_admin(settings, address))
    except Exception as exc:
        err.print(f"[red]cannot reach the database:[/] {exc}")
        raise typer.Exit(1) from None
    if not promoted:
        err.print(f"[red]no account has the email {escape(address)}[/]")
        raise typer.Exit(1)
    console.print(f"{escape(address)} is an administrator")
