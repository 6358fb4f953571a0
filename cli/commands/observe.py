"""What a server did: its logs, builds, telemetry events and virtual-machine guests."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.client import Api, console, err, sse_events

app = typer.Typer()


def _print_log(line: dict[str, Any]) -> None:
    console.print(f"[dim]{line['source']:<8}[/] {escape(line['message'])}")


@app.command()
def logs(
    server: str = typer.Argument(..., help="id, slug or name"),
    tail: int = typer.Option(100, help="How many earlier lines to show"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines as they are written"),
) -> None:
    """Platform events and the serving instance's output."""
    client = Api()
    found = client.resolve_server(server)
    if follow:
        try:
            for name, data in sse_events(client, f"/api/servers/{found['id']}/logs/stream", {"tail": tail}):
                if name == "log":
                    _print_log(data)
                elif name == "end":
                    err.print(data.get("reason", "the stream ended"))
                    return
        except KeyboardInterrupt:
            return
        return
    for line in client.request("GET", f"/api/servers/{found['id']}/logs", params={"tail": tail})["data"]:
        _print_log(line)


@app.command()
def artifacts(
    server: str = typer.Argument(..., help="id, slug or name"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Builds of a git server: revision, status, pushed image and per-platform digests."""
    client = Api()
    found = client.resolve_server(server)
    data = client.request("GET", f"/api/servers/{found['id']}/artifacts")
    if as_json:
        console.print_json(data=data)
        return
    table = Table("revision", "status", "image", "platforms", "created")
    for run in data["data"]:
        image = f"{run['registry_image']}@{run['manifest_digest']}" if run["manifest_digest"] else run["local_image"]
        platforms = ", ".join(p["platform"] for p in run["platforms"])
        table.add_row(run["source_revision"][:12], run["status"], image or "", platforms, run["created_at"][:19])
    console.print(table)


@app.command()
def events(
    server: str = typer.Argument(..., help="id, slug or name"),
    event: str = typer.Option(None, help="Only these events, comma-separated (e.g. push_retry,push_failed)"),
) -> None:
    """Build, push and credential telemetry events of a server, oldest first."""
    client = Api()
    found = client.resolve_server(server)
    params = {"event": event} if event else {}
    for item in client.request("GET", f"/api/servers/{found['id']}/metrics", params=params)["data"]:
        details = " ".join(f"{k}={v}" for k, v in item["details"].items() if k != "deployment_id")
        console.print(f"[dim]{item['created_at'][:19]}[/] [bold]{item['event']}[/] {escape(details)}")


@app.command()
def vm(
    server: str = typer.Argument(..., help="id, slug or name"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """The server's virtual-machine guests: state, address, attestation posture, and the history of both."""
    client = Api()
    found = client.resolve_server(server)
    data = client.request("GET", f"/api/servers/{found['id']}/vm")
    if as_json:
        console.print_json(data=data)
        return
    if not data["guests"]:
        console.print("[dim]no guests: this server has not run on the virtual-machine runtime[/]")
        return
    table = Table("domain", "state", "address", "size", "posture", "attested")
    for guest in data["guests"]:
        posture = guest["posture"] + (f" ({guest['posture_reason']})" if guest["posture_reason"] else "")
        table.add_row(
            guest["domain"],
            guest["state"],
            guest["address"] or "",
            f"{guest['memory_mib']} MiB, {guest['vcpus']} vCPU",
            posture,
            (guest["attested_at"] or "")[:19],
        )
    console.print(table)
    for change in reversed(data["trust"]):
        console.print(
            f"[dim]{change['at'][:19]}[/] {change['previous'] or '-'} -> [bold]{change['posture']}[/] {change['note']}"
        )
    for event in reversed(data["events"][:20]):
        console.print(f"[dim]{event['at'][:19]}[/] {event['domain']} {event['event']} {event['detail'] or ''}")
