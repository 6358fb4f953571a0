"""`mcphost remediation`: playbooks, their bindings to servers, and their runs."""

from __future__ import annotations

from typing import Any

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from cli.client import Api, console, err, sse_events
from cli.commands.common import json_arg

app = typer.Typer(
    help="Remediation playbooks and their runs: create, bind, run, list, approve, reject, cancel, watch.",
    no_args_is_help=True,
)
REMEDIATION = "/api/trust/remediation"


def _print_remediation(run: dict[str, Any]) -> None:
    ended = f" exit {run['exit_code']}" if run["exit_code"] is not None else ""
    reason = f" ({escape(run['reason'])})" if run.get("reason") else ""
    step = f" at {escape(run['current_step'])}" if run.get("current_step") else ""
    console.print(f"run {run['id']} [bold]{run['status']}[/]{step}{ended}{reason} version {run['version']}")
    for result in run["results"]:
        console.print(f"  {escape(result['step'])}: {result['status']} {escape(result['reason'] or '')}")


@app.command("create")
def remediation_create(
    name: str = typer.Argument(..., help="The playbook's name"),
    playbook: str = typer.Option(
        ..., "--playbook", help='{"steps": [...], "approval": {...}, "sla_seconds": N} as JSON, or @FILE holding it'
    ),
) -> None:
    """Create a playbook (see docs/deployments.md, Remediation)."""
    body = json_arg(playbook, "--playbook")
    if not isinstance(body, dict):
        err.print("[red]--playbook must be a JSON object with steps[/]")
        raise typer.Exit(2)
    made = Api().request("POST", f"{REMEDIATION}/playbooks", json={"name": name, **body})
    console.print(f"playbook {made['id']} [bold]{escape(made['name'])}[/]: {len(made['steps'])} step(s)")


def _playbook_id(client: Api, ref: str) -> str:
    for playbook in client.request("GET", f"{REMEDIATION}/playbooks")["data"]:
        if ref in (playbook["id"], playbook["name"]):
            return str(playbook["id"])
    err.print(f"[red]no playbook {ref!r}[/]")
    raise typer.Exit(1)


@app.command("bind")
def remediation_bind(
    playbook: str = typer.Argument(..., help="Playbook id or name"),
    server: str = typer.Argument(..., help="id, slug or name"),
    unbind: bool = typer.Option(False, "--unbind", help="Remove the binding instead"),
) -> None:
    """Bind a playbook to a server: it runs when the server turns degraded or its guest does not attest."""
    client = Api()
    found = client.resolve_server(server)
    path = f"{REMEDIATION}/playbooks/{_playbook_id(client, playbook)}/servers/{found['id']}"
    client.request("DELETE" if unbind else "PUT", path)
    console.print(f"{'unbound from' if unbind else 'bound to'} {found['slug']}")


@app.command("run")
def remediation_run(
    playbook: str = typer.Argument(..., help="Playbook id or name"),
    server: str = typer.Argument(..., help="id, slug or name"),
) -> None:
    """Run a playbook for a server now."""
    client = Api()
    found = client.resolve_server(server)
    run = client.request(
        "POST", f"{REMEDIATION}/playbooks/{_playbook_id(client, playbook)}/runs", json={"server_id": found["id"]}
    )
    _print_remediation(run)


@app.command("list")
def remediation_list(
    server: str = typer.Option(None, "--server", help="Only this server's runs"),
    active: bool = typer.Option(False, "--active", help="Only runs awaiting approval or running"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Remediation runs of your servers, newest first."""
    client = Api()
    params: dict[str, Any] = {"active": active}
    if server:
        params["server_id"] = client.resolve_server(server)["id"]
    runs = client.request("GET", f"{REMEDIATION}/runs", params=params)
    if as_json:
        console.print_json(data=runs)
        return
    table = Table("run", "status", "trigger", "step", "exit", "version", "created")
    for run in runs["data"]:
        exit_code = "" if run["exit_code"] is None else str(run["exit_code"])
        table.add_row(
            run["id"], run["status"], run["trigger"], run["current_step"] or "", exit_code, str(run["version"]),
            run["created_at"][:19],
        )  # fmt: skip
    console.print(table)


def _change(run: str, action: str, comment: str | None = None) -> None:
    """POST an approve/reject/cancel with the version just read (If-Match); print the run after it."""
    client = Api()
    current = client.request("GET", f"{REMEDIATION}/runs/{run}")
    headers = {"If-Match": f'"{current["version"]}"'}
    body = {"comment": comment} if comment is not None else None
    try:
        response = client.http.post(f"{REMEDIATION}/runs/{run}/{action}", json=body, headers=headers)
    except httpx.HTTPError as exc:
        client.unreachable(exc)
    client.check(response)
    if response.status_code == 202 and "detail" in response.json():
        console.print(f"[yellow]queued:[/] {escape(response.json()['detail'])}")
        return
    _print_remediation(response.json())


@app.command("approve")
def remediation_approve(
    run: str = typer.Argument(..., help="The run's id"),
    comment: str = typer.Option("", "-m", "--comment", help="Why (kept in the run's artifacts)"),
) -> None:
    """Approve a run awaiting approval."""
    _change(run, "approve", comment)


@app.command("reject")
def remediation_reject(
    run: str = typer.Argument(..., help="The run's id"),
    comment: str = typer.Option("", "-m", "--comment", help="Why (kept in the run's artifacts)"),
) -> None:
    """Reject a run awaiting approval: it ends without running a step."""
    _change(run, "reject", comment)


@app.command("cancel")
def remediation_cancel(run: str = typer.Argument(..., help="The run's id")) -> None:
    """Stop a run after the step under way."""
    _change(run, "cancel")


@app.command("watch")
def remediation_watch(run: str = typer.Argument(..., help="The run's id")) -> None:
    """Follow a run until it ends (exit 1 unless it succeeds)."""
    client = Api()
    status = ""
    for name, data in sse_events(client, f"{REMEDIATION}/runs/{run}/stream"):
        if name == "artifact":
            console.print(f"[dim]{data['created_at'][:19]}[/] {escape(data['content'])}")
        elif name == "end":
            status = str(data.get("status", ""))
            console.print(f"[bold]{status}[/] (exit code {data.get('exit_code')})")
            break
    raise typer.Exit(0 if status == "succeeded" else 1)
