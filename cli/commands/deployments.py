"""Deployments: deploy and follow, cancel, roll back, stop; webhook deliveries."""

from __future__ import annotations

import json
import time
from contextlib import closing
from typing import Any

import httpx
import typer
from rich.markup import escape

from cli.client import Api, console, err, sse_lines
from records.deployments import TERMINAL, Status

app = typer.Typer()


def _print_steps(detail: dict[str, Any], seen: dict[str, str]) -> None:
    for step in detail["steps"]:
        if seen.get(step["step"]) != step["status"]:
            seen[step["step"]] = step["status"]
            mark = {
                "started": "[yellow]...[/]",
                "succeeded": "[green]ok[/]",
                "failed": "[red]failed[/]",
            }.get(step["status"], step["status"])
            message = f"  {step['message']}" if step.get("message") and step["status"] != "started" else ""
            console.print(f"  {step['step']:<16} {mark}{message}")


def _still_running(detail: dict[str, Any], deployment_id: str, timeout: float) -> typer.Exit:
    err.print(
        f"[yellow]still {detail['status']} after {timeout:.0f}s; follow with "
        f"`mcphost deploy --follow {deployment_id}`[/]"
    )
    return typer.Exit(3)


def follow_deployment(client: Api, deployment_id: str, timeout: float) -> dict[str, Any]:
    """Print each step as the workflow records it, until the deployment ends: from the server-sent
    event stream, or by polling when the stream is not available."""
    seen: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    detail: dict[str, Any] = {}
    stream = sse_lines(client, f"/api/deployments/{deployment_id}/events", httpx.Timeout(10.0, read=30.0))
    try:
        with closing(stream):
            for event, data in stream:
                if data is not None and event == "deployment":
                    detail = json.loads(data)
                    _print_steps(detail, seen)
                elif data is not None and event == "end" and detail:
                    return detail
                if time.monotonic() > deadline:
                    raise _still_running(detail or {"status": "deploying"}, deployment_id, timeout)
    except httpx.HTTPError:
        pass  # fall back to polling below
    while True:
        detail = client.request("GET", f"/api/deployments/{deployment_id}")
        _print_steps(detail, seen)
        # `running` comes as soon as the revision serves; retiring the earlier one finishes just after.
        if detail["status"] in TERMINAL and (detail.get("settled", True) or time.monotonic() > deadline):
            return detail
        if time.monotonic() > deadline:
            raise _still_running(detail, deployment_id, timeout)
        time.sleep(0.5)


@app.command()
def deploy(
    server: str = typer.Argument(..., help="id, slug or name of the server (or a deployment id with --follow)"),
    follow: bool = typer.Option(False, "--follow", help="Only follow an existing deployment id"),
    timeout: float = typer.Option(900, help="Seconds to wait for the deployment to end"),
) -> None:
    """Deploy a server and show the workflow's steps live until it ends."""
    client = Api()
    if follow:
        deployment_id = server
    else:
        found = client.resolve_server(server)
        accepted = client.request("POST", f"/api/servers/{found['id']}/deployments")
        deployment_id = accepted["deployment_id"]
        console.print(f"deploying {found['name']} revision {accepted['seq']} (workflow {accepted['workflow_id']})")
    detail = follow_deployment(client, deployment_id, timeout)
    if detail["status"] == Status.RUNNING:
        console.print(f"[green]running[/] - MCP endpoint: {client.url}/mcp/{server if follow else found['slug']}")
        return
    err.print(f"[red]{detail['status']}:[/] {detail.get('error') or ''}")
    raise typer.Exit(1)


@app.command()
def cancel(
    deployment: str = typer.Argument(
        ..., help="id of the deployment under way (see `mcphost deploy` or the server's deployments)"
    ),
    timeout: float = typer.Option(300, help="Seconds to wait for the deployment to end"),
) -> None:
    """Cancel a deployment under way: its current step stops (an install is killed), what it started is
    removed, and the revision serving before keeps serving."""
    client = Api()
    client.request("POST", f"/api/deployments/{deployment}/cancel")
    detail = follow_deployment(client, deployment, timeout)
    console.print(f"{detail['status']}: {detail.get('error') or ''}".rstrip(": "))


@app.command()
def rollback(
    server: str = typer.Argument(..., help="id, slug or name of the server"),
    to: str | None = typer.Option(
        None, "--to", help="Revision number or deployment id to return to (default: the newest earlier one that served)"
    ),
    timeout: float = typer.Option(900, help="Seconds to wait for the deployment to end"),
) -> None:
    """Serve an earlier revision again (its exact commit or package and its config), following the steps."""
    client = Api()
    found = client.resolve_server(server)
    body: dict[str, Any] = {}
    if to is not None:
        body = {"seq": int(to)} if to.isdigit() else {"deployment_id": to}
    accepted = client.request("POST", f"/api/servers/{found['id']}/rollback", json=body)
    console.print(
        f"rolling {found['name']} back to revision {accepted['rolled_back_to']} as revision {accepted['seq']} "
        f"(workflow {accepted['workflow_id']})"
    )
    detail = follow_deployment(client, accepted["deployment_id"], timeout)
    if detail["status"] == Status.RUNNING:
        console.print(f"[green]running[/] revision {accepted['rolled_back_to']} again")
        return
    err.print(f"[red]{detail['status']}:[/] {detail.get('error') or ''} (the revision serving before keeps serving)")
    raise typer.Exit(1)


@app.command()
def webhooks(
    server: str = typer.Argument(..., help="id, slug or name"),
    limit: int = typer.Option(20, help="How many, newest first"),
) -> None:
    """Recent webhook deliveries of a server and what came of each."""
    client = Api()
    found = client.resolve_server(server)
    rows = client.request("GET", f"/api/servers/{found['id']}/webhook-deliveries", params={"limit": limit})["data"]
    for row in rows:
        color = {"accepted": "green", "ignored": "yellow"}.get(row["outcome"], "red")
        console.print(
            f"{row['created_at'][:19]}  {row['provider']:<7} [{color}]{row['outcome']:<8}[/] {row['status_code']}  "
            f"{escape(row['reason'])}"
        )


@app.command()
def stop(server: str = typer.Argument(..., help="id, slug or name")) -> None:
    """Take a server off the gateway and stop its instances."""
    client = Api()
    found = client.resolve_server(server)
    result = client.request("POST", f"/api/servers/{found['id']}/stop")
    console.print(f"stopping {found['name']} (workflow {result['workflow_id']})")
