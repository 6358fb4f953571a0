"""`mcphost promote`: promotion tracks and the promotions along them."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.client import Api, console, err, sse_events
from cli.commands.approvals import vote
from cli.commands.common import json_arg

app = typer.Typer(
    help="Promotion tracks: create and list tracks, promote a digest into a stage, watch, approve, abort, "
    "reject a digest, hold auto-promotion, roll a stage back, history.",
    no_args_is_help=True,
)


def _resolve_track(client: Api, ref: str) -> dict[str, Any]:
    for track in client.request("GET", "/api/promotions/tracks")["data"]:
        if ref in (track["id"], track["name"]):
            return track  # type: ignore[no-any-return]
    err.print(f"[red]no promotion track {ref!r}[/] (see `mcphost promote tracks`)")
    raise typer.Exit(1)


def _print_promotion(p: dict[str, Any]) -> None:
    console.print(
        f"promotion {p['id']}: [bold]{p['status']}[/] {escape(p['subject'])} -> stage {escape(p['stage'])} "
        f"({p['kind']}; step {escape(p['step'] or '-')})" + (f"\n  {escape(p['reason'])}" if p["reason"] else "")
    )
    if p["notes"]:
        console.print("  notes: " + escape(", ".join(p["notes"])))
    if p["governance_run_id"] and p["status"] == "awaiting_approval":
        console.print(f"  approve with: mcphost promote approve {p['id']}")


@app.command("tracks")
def promote_tracks(as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """Your tracks and the digest each stage runs now."""
    listing = Api().request("GET", "/api/promotions/tracks")
    if as_json:
        console.print_json(data=listing)
        return
    table = Table("track", "name", "stages (current digest)", "held")
    for track in listing["data"]:
        stages = ", ".join(f"{s['name']}={(track['current'][s['name']] or '-')[:19]}" for s in track["stages"])
        table.add_row(track["id"], escape(track["name"]), escape(stages), escape(", ".join(track["held"]) or "-"))
    console.print(table)


@app.command("create-track")
def promote_create_track(
    name: str = typer.Argument(..., help="The track's name"),
    stages: str = typer.Option(
        ..., "--stages", help="The stages as a JSON list, or @FILE holding it (see docs/release-trains.md, Promotions)"
    ),
) -> None:
    """Create a track from its stages (in order), e.g. --stages @stages.json."""
    parsed = json_arg(stages, "--stages")
    track = Api().request("POST", "/api/promotions/tracks", json={"name": name, "stages": parsed})
    console.print(
        f"track {track['id']} [bold]{escape(track['name'])}[/]: " + " -> ".join(s["name"] for s in track["stages"])
    )


@app.command("delete-track")
def promote_delete_track(track: str = typer.Argument(..., help="Track id or name")) -> None:
    """Delete a track and its history (refused while one of its promotions is under way)."""
    client = Api()
    found = _resolve_track(client, track)
    client.request("DELETE", f"/api/promotions/tracks/{found['id']}")
    console.print(f"deleted track {escape(found['name'])}")


def _follow_promotion(client: Api, promotion: dict[str, Any]) -> None:
    for event, data in sse_events(client, f"/api/promotions/{promotion['id']}/stream"):
        if event == "promotion":
            _print_promotion(data)
        elif event == "end":
            if data.get("status") not in ("active",):
                raise typer.Exit(1)
            return


@app.command("schedule")
def promote_schedule(
    track: str = typer.Argument(..., help="Track id or name"),
    stage: str = typer.Argument(..., help="The stage to promote into"),
    deployment: str = typer.Option(None, "--deployment", help="The deployment whose artifact is promoted"),
    digest: str = typer.Option(None, "--digest", help="Or the digest (package@version) an earlier stage runs"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Watch it until it ends (exit 1 unless active)"),
) -> None:
    """Promote a digest into a stage. Refused (409) when it has not been active in the stage before."""
    client = Api()
    body: dict[str, Any] = {"track_id": _resolve_track(client, track)["id"], "stage": stage}
    if (deployment is None) == (digest is None):
        err.print("[red]give --deployment or --digest[/]")
        raise typer.Exit(2)
    body.update({"deployment_id": deployment} if deployment else {"subject": digest})
    promotion = client.request("POST", "/api/promotions/schedule", json=body)
    _print_promotion(promotion)
    if follow:
        _follow_promotion(client, promotion)


@app.command("history")
def promote_history(
    track: str = typer.Option(None, "--track", help="Track id or name"),
    stage: str = typer.Option(None, "--stage"),
    digest: str = typer.Option(None, "--digest"),
    status: str = typer.Option(None, "--status", help="e.g. active, awaiting_approval, rejected"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Promotions, newest first."""
    client = Api()
    params = {"stage": stage, "subject": digest, "status": status}
    if track:
        params["track_id"] = _resolve_track(client, track)["id"]
    listing = client.request("GET", "/api/promotions/history", params={k: v for k, v in params.items() if v})
    if as_json:
        console.print_json(data=listing)
        return
    table = Table("promotion", "stage", "digest", "kind", "status", "step", "since")
    for p in listing["data"]:
        table.add_row(p["id"], escape(p["stage"]), escape(p["subject"][:40]), p["kind"], p["status"],
                      escape(p["step"] or "-"), p["created_at"][:19])  # fmt: skip
    console.print(table)


@app.command("show")
def promote_show(promotion: str = typer.Argument(..., help="The promotion's id")) -> None:
    _print_promotion(Api().request("GET", f"/api/promotions/{promotion}"))


@app.command("watch")
def promote_watch(promotion: str = typer.Argument(..., help="The promotion's id")) -> None:
    """Follow a promotion until it ends (exit 1 unless it ends active)."""
    client = Api()
    _follow_promotion(client, client.request("GET", f"/api/promotions/{promotion}"))


@app.command("approve")
def promote_approve(
    promotion: str = typer.Argument(..., help="The promotion's id"),
    comment: str = typer.Option("", "-m", "--comment", help="Why (kept in the audit trail)"),
) -> None:
    """Approve the promotion's open approval step."""
    vote(f"/api/promotions/{promotion}/approve", comment)


@app.command("reject")
def promote_reject(
    promotion: str = typer.Argument(..., help="The promotion's id"),
    comment: str = typer.Option("", "-m", "--comment", help="Why (kept in the audit trail)"),
) -> None:
    """Reject the promotion at its open approval step."""
    vote(f"/api/promotions/{promotion}/reject", comment)


@app.command("abort")
def promote_abort(promotion: str = typer.Argument(..., help="The promotion's id")) -> None:
    """Abort a promotion under way (its deployments are cancelled; what served keeps serving)."""
    Api().request("POST", f"/api/promotions/{promotion}/abort")
    console.print(f"aborting promotion {promotion}")


@app.command("reject-digest")
def promote_reject_digest(
    track: str = typer.Argument(..., help="Track id or name"),
    digest: str = typer.Argument(..., help="The digest (package@version) to reject"),
    reason: str = typer.Option("", "-m", "--reason", help="Why (shown to whoever tries to promote it)"),
) -> None:
    """Never promote this digest on the track again (its open promotions are aborted)."""
    client = Api()
    found = _resolve_track(client, track)
    client.request(
        "POST", f"/api/promotions/tracks/{found['id']}/rejections", json={"subject": digest, "reason": reason}
    )
    console.print(f"rejected {escape(digest)} on track {escape(found['name'])}")


@app.command("hold")
def promote_hold(
    track: str = typer.Argument(..., help="Track id or name"),
    stage: str = typer.Argument(..., help="The stage"),
    release: bool = typer.Option(False, "--release", help="Release the hold instead"),
) -> None:
    """Hold (or --release) a stage's auto-promotion."""
    client = Api()
    found = _resolve_track(client, track)
    method = "DELETE" if release else "POST"
    updated = client.request(method, f"/api/promotions/tracks/{found['id']}/stages/{stage}/hold")
    console.print(f"held stages of {escape(found['name'])}: {escape(', '.join(updated['held']) or 'none')}")


@app.command("rollback")
def promote_rollback(
    track: str = typer.Argument(..., help="Track id or name"),
    stage: str = typer.Argument(..., help="The stage"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Watch it until it ends"),
) -> None:
    """Put a stage back on the digest it ran before its current one."""
    client = Api()
    found = _resolve_track(client, track)
    promotion = client.request("POST", f"/api/promotions/tracks/{found['id']}/stages/{stage}/rollback")
    _print_promotion(promotion)
    if follow:
        _follow_promotion(client, promotion)
