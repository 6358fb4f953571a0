"""`mcphost approvals`: governance runs waiting on you, and votes on them."""

from __future__ import annotations

from typing import Any

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from cli.client import Api, console

app = typer.Typer(help="Governance runs waiting on you: list, show, approve, reject.", no_args_is_help=True)


def _print_run(run: dict[str, Any]) -> None:
    console.print(
        f"run {run['id']}: [bold]{run['status']}[/] ({escape(run['subject'])}, tier {escape(run['tier'])}); "
        f"step {escape(run['current_step'] or '-')}" + (f"; {escape(run['reason'])}" if run["reason"] else "")
    )
    for entry in run["audit"]:
        mark = "" if entry["accepted"] else "[red]refused[/] "
        who = escape(entry["actor"] or "platform")
        console.print(f"  {entry['created_at'][:19]}  {mark}{entry['action']:<12} {who:<30} {escape(entry['comment'])}")


@app.command("list")
def approvals_list(as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """Governance runs under way that name you as an approver, or that you own."""
    listing = Api().request("GET", "/api/governance/runs")
    if as_json:
        console.print_json(data=listing)
        return
    table = Table("run", "subject", "tier", "step", "since")
    for run in listing["data"]:
        table.add_row(run["id"], escape(run["subject"]), escape(run["tier"]), escape(run["current_step"] or "-"),
                      run["created_at"][:19])  # fmt: skip
    console.print(table)


@app.command("show")
def approvals_show(run: str = typer.Argument(..., help="The governance run's id")) -> None:
    """A governance run with its audit trail."""
    _print_run(Api().request("GET", f"/api/governance/runs/{run}"))


def vote(path: str, comment: str) -> None:
    """Vote (POST path) and print the governance run it went to; a queued vote says so."""
    client = Api()
    try:
        response = client.http.post(path, json={"comment": comment})
    except httpx.HTTPError as exc:
        client.unreachable(exc)
    client.check(response)
    if response.status_code == 202:
        console.print(f"[yellow]queued:[/] {escape(response.json()['detail'])}")
        return
    _print_run(response.json())


@app.command("approve")
def approvals_approve(
    run: str = typer.Argument(..., help="The governance run's id"),
    comment: str = typer.Option("", "-m", "--comment", help="Why (kept in the audit trail)"),
) -> None:
    """Approve the run's open approval step."""
    vote(f"/api/governance/runs/{run}/approve", comment)


@app.command("reject")
def approvals_reject(
    run: str = typer.Argument(..., help="The governance run's id"),
    comment: str = typer.Option("", "-m", "--comment", help="Why (kept in the audit trail)"),
) -> None:
    """Reject the run's open approval step (this rejects the run)."""
    vote(f"/api/governance/runs/{run}/reject", comment)
