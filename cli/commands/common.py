"""Helpers the command groups share."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from cli.client import err


def json_arg(value: str, option: str) -> Any:
    try:
        raw = Path(value[1:]).read_text() if value.startswith("@") else value
    except OSError as exc:
        err.print(f"[red]cannot read {value[1:]}:[/] {exc.strerror}")
        raise typer.Exit(2) from None
    try:
        return json.loads(raw)
    except ValueError as exc:
        err.print(f"[red]{option} is not JSON:[/] {exc}")
        raise typer.Exit(2) from None
