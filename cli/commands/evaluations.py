"""`mcphost eval`: a server's evaluation tests, their runs, certifications and the ranking."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from cli.client import Api, console, err
from records.evaluation_runs import FINISHED

app = typer.Typer(
    help="Evaluation tests of a server: add, list, remove, run them against a revision, see results and rankings.",
    no_args_is_help=True,
)
EXPECTATION_HELP = (
    "KIND:VALUE with KIND one of exact, contains, regex, similarity (VALUE is text), json_subset, json_schema "
    "(VALUE is JSON, or @FILE holding it); e.g. contains:UTC, 'json_subset:{\"result\": 5}'"
)


def parse_expectation_option(text: str, threshold: float | None, ignore_case: bool) -> dict[str, Any]:
    kind, sep, value = text.partition(":")
    if not sep:
        err.print(f"[red]--expect wants KIND:VALUE[/] ({EXPECTATION_HELP})")
        raise typer.Exit(2)
    if kind in ("json_subset", "json_schema"):
        try:
            raw = Path(value[1:]).read_text() if value.startswith("@") else value
        except OSError as exc:
            err.print(f"[red]cannot read {value[1:]}:[/] {exc.strerror}")
            raise typer.Exit(2) from None
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            err.print(f"[red]the value of {kind} is not JSON:[/] {exc}")
            raise typer.Exit(2) from None
        return {"kind": kind, ("schema" if kind == "json_schema" else "value"): parsed}
    expectation: dict[str, Any] = {"kind": kind, ("pattern" if kind == "regex" else "value"): value}
    if threshold is not None:
        expectation["threshold"] = threshold
    if ignore_case:
        expectation["ignore_case"] = True
    return expectation


@app.command("add")
def eval_add(
    server: str = typer.Argument(..., help="id, slug or name"),
    name: str = typer.Argument(..., help="A name unique among the server's tests"),
    tool: str = typer.Option(..., "--tool", help="The tool to call"),
    arguments: str = typer.Option("{}", "--args", help="The tool's arguments as a JSON object"),
    expect: str = typer.Option(..., "--expect", help=EXPECTATION_HELP),
    threshold: float = typer.Option(None, "--threshold", help="similarity: least Jaro-Winkler similarity (0..1)"),
    ignore_case: bool = typer.Option(False, "--ignore-case", help="contains, regex, similarity: ignore case"),
    expect_error: bool = typer.Option(False, "--expect-error", help="The tool should answer with an error"),
    timeout: float = typer.Option(30.0, "--timeout", help="Seconds the call may take"),
) -> None:
    """Add an evaluation test to a server."""
    try:
        args = json.loads(arguments)
    except ValueError as exc:
        err.print(f"[red]--args is not JSON:[/] {exc}")
        raise typer.Exit(2) from None
    client = Api()
    found = client.resolve_server(server)
    body = {
        "name": name,
        "tool": tool,
        "arguments": args,
        "expectation": parse_expectation_option(expect, threshold, ignore_case),
        "expect_error": expect_error,
        "timeout_seconds": timeout,
    }
    created = client.request("POST", f"/api/servers/{found['id']}/eval/tests", json=body)
    console.print(f"added test {escape(created['name'])!r} to {escape(found['slug'])}")


@app.command("tests")
def eval_tests(
    server: str = typer.Argument(..., help="id, slug or name"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """The server's evaluation tests."""
    client = Api()
    found = client.resolve_server(server)
    listing = client.request("GET", f"/api/servers/{found['id']}/eval/tests")
    if as_json:
        console.print_json(data=listing)
        return
    table = Table("name", "tool", "arguments", "expectation", "timeout")
    for test in listing["data"]:
        table.add_row(
            escape(test["name"]),
            escape(test["tool"]),
            escape(json.dumps(test["arguments"])[:60]),
            escape(json.dumps(test["expectation"])[:80]),
            f"{test['timeout_seconds']:g} s",
        )
    console.print(table)


@app.command("rm")
def eval_rm(
    server: str = typer.Argument(..., help="id, slug or name"),
    name: str = typer.Argument(..., help="The test's name (or id)"),
) -> None:
    """Remove a test. Runs that used it keep their results."""
    client = Api()
    found = client.resolve_server(server)
    listing = client.request("GET", f"/api/servers/{found['id']}/eval/tests")["data"]
    match = [t for t in listing if name in (t["name"], t["id"])]
    if not match:
        err.print(f"[red]no test named {escape(name)!r} on {escape(found['slug'])}[/]")
        raise typer.Exit(1)
    client.request("DELETE", f"/api/servers/{found['id']}/eval/tests/{match[0]['id']}")
    console.print(f"removed {escape(match[0]['name'])!r}")


def _print_results(detail: dict[str, Any]) -> None:
    run = detail["run"]
    table = Table("test", "tool", "result", "score", "ms", "detail")
    for result in detail["results"]:
        table.add_row(
            escape(result["test_name"]),
            escape(result["tool"]),
            "[green]pass[/]" if result["passed"] else "[red]fail[/]",
            f"{result['score']:.3f}",
            f"{result['latency_ms']:.0f}" if result["latency_ms"] is not None else "-",
            escape(result["detail"][:100]),
        )
    console.print(table)
    color = {"passed": "green", "failed": "red", "error": "red"}.get(run["status"], "yellow")
    score = f", score {run['score']:.3f}" if run["score"] is not None else ""
    where = "a candidate launched for the run" if run["candidate"] else "the serving revision"
    console.print(
        f"[{color}]{run['status']}[/]: {run['passed']}/{run['total']} passed{score} "
        f"(revision {run['seq']}, {where})" + (f": {escape(run['error'])}" if run["error"] else "")
    )


@app.command("run")
def eval_run(
    server: str = typer.Argument(..., help="id, slug or name"),
    deployment: str = typer.Option(
        None, "--deployment", help="Evaluate this deployment (launched beside the serving one); default: the serving"
    ),
    test: list[str] = typer.Option(None, "--test", help="Run only this test (repeat for more); default: all"),
    certify: str = typer.Option(
        None, "--certify", help="Certify the revision's artifact as TIER[:REQUIREMENT] when every test passes"
    ),
    valid_days: float = typer.Option(30, "--valid-days", help="With --certify: days the certification is valid"),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Follow the run until it ends"),
    timeout: float = typer.Option(1800, help="Seconds to wait for the run to end"),
) -> None:
    """Run the server's tests and print each result. Exits 1 unless every test passed."""
    client = Api()
    found = client.resolve_server(server)
    body: dict[str, Any] = {}
    if deployment:
        body["deployment_id"] = deployment
    if test:
        body["tests"] = test
    if certify:
        tier, _, requirement = certify.partition(":")
        body["certify"] = {"tier": tier, "requirement": requirement or "default", "valid_days": valid_days}
    run = client.request("POST", f"/api/servers/{found['id']}/eval/run", json=body)
    console.print(f"evaluation {run['id']} of revision {run['seq']} (workflow {run['workflow_id']})")
    if not wait:
        return
    deadline = time.monotonic() + timeout
    while True:
        detail = client.request("GET", f"/api/evaluations/{run['id']}")
        if detail["run"]["status"] in FINISHED:
            break
        if time.monotonic() > deadline:
            err.print(f"[yellow]still {detail['run']['status']} after {timeout:g} s[/]; see `mcphost eval results`")
            raise typer.Exit(1)
        time.sleep(0.5)
    _print_results(detail)
    if detail["run"]["status"] != "passed":
        raise typer.Exit(1)


@app.command("results")
def eval_results(
    server: str = typer.Argument(..., help="id, slug or name"),
    run: str = typer.Option(None, "--run", help="This run (default: the newest)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """A run's results per test."""
    client = Api()
    found = client.resolve_server(server)
    detail = client.request("GET", f"/api/servers/{found['id']}/eval/results", params={"run_id": run} if run else None)
    if as_json:
        console.print_json(data=detail)
        return
    _print_results(detail)


@app.command("certifications")
def eval_certifications(
    server: str = typer.Argument(..., help="id, slug or name"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Certifications of the server's artifacts, newest first."""
    client = Api()
    found = client.resolve_server(server)
    listing = client.request("GET", f"/api/servers/{found['id']}/certifications")
    if as_json:
        console.print_json(data=listing)
        return
    table = Table("subject", "tier:requirement", "status", "valid until", "evidence")
    for row in listing["data"]:
        color = {"pass": "green", "fail": "red"}.get(row["status"], "yellow")
        table.add_row(
            escape(row["subject"]),
            escape(f"{row['tier']}:{row['requirement']}"),
            f"[{color}]{row['status']}[/]",
            (row["valid_until"] or "-")[:19],
            row["evaluation_run_id"] or "-",
        )
    console.print(table)


@app.command("board")
def eval_board(as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """Your servers ranked by the mean score of their finished evaluation runs."""
    client = Api()
    summary = client.request("GET", "/api/evaluations/summary")
    if as_json:
        console.print_json(data=summary)
        return
    table = Table("rank", "server", "average", "runs", "latest", "at")
    for row in summary["data"]:
        latest = f"{row['latest_status']} {row['latest_score']:.3f}" if row["latest_score"] is not None else "-"
        table.add_row(
            str(row["rank"]),
            escape(row["server_name"]),
            f"{row['average_score']:.3f}",
            str(row["runs"]),
            latest,
            row["latest_at"][:19],
        )
    console.print(table)
