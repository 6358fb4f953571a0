"""`mcphost up` listens on this machine only unless told otherwise, and says so."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.main import app
from cli.up import bindings, temporal_command


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_by_default_everything_is_on_loopback_and_the_note_says_how_to_expose() -> None:
    up = typer.main.get_command(app).commands["up"]  # type: ignore[attr-defined]
    default = next(p for p in up.params if p.name == "bind_address").default
    assert default == "127.0.0.1"

    where = bindings(default)
    assert (where.api, where.temporal, where.temporal_ui, where.api_probe) == ("127.0.0.1",) * 4
    argv = temporal_command("temporal", Path("/state"), where, 7233, 8233, [])
    assert _flag(argv, "--ip") == "127.0.0.1" and _flag(argv, "--ui-ip") == "127.0.0.1"
    note = where.describe(temporal=True, postgres=True)
    assert note.startswith("Listening on 127.0.0.1 only (API, gateway, Temporal, Temporal UI)")
    assert "unix socket" in note and "set BIND_ADDRESS=0.0.0.0" in note
    assert bindings("").api == bindings(None).api == "127.0.0.1"


def test_bind_address_exposes_the_api_and_gateway_only() -> None:
    where = bindings("0.0.0.0")
    assert where.api == "0.0.0.0" and where.api_probe == "127.0.0.1"
    argv = temporal_command("temporal", Path("/state"), where, 7233, 8233, [])
    # Temporal and its UI have no login: they stay on loopback whatever the API does.
    assert _flag(argv, "--ip") == "127.0.0.1" and _flag(argv, "--ui-ip") == "127.0.0.1"
    note = where.describe(temporal=True, postgres=False)
    assert "every interface" in note and "Temporal and Temporal UI on 127.0.0.1 only" in note
    assert "BIND_ADDRESS=0.0.0.0 to expose" not in note

    lan = bindings("10.1.2.3")
    assert lan.api_probe == "10.1.2.3" and "listening on 10.1.2.3" in lan.describe(temporal=False, postgres=False)
