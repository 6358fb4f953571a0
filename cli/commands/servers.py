"""`mcphost servers`: create, list, show, delete and watch servers."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.table import Table

from cli.client import Api, console, err, sse_events

app = typer.Typer(help="Create, list, show and delete servers.", no_args_is_help=True)


def _source_from_options(
    package: str | None,
    registry: str,
    version: str | None,
    image: str | None,
    port: int | None,
    command: str | None,
    args: list[str],
    transport: str,
    entrypoint: str | None,
    git: str | None = None,
    branch: str | None = None,
    ref: str | None = None,
    subdirectory: str | None = None,
) -> dict[str, Any]:
    chosen = [x for x in (package, image, command, git) if x]
    if len(chosen) != 1:
        err.print("[red]give exactly one of --package, --image, --command or --git[/]")
        raise typer.Exit(2)
    if package:
        source: dict[str, Any] = {
            "type": "package",
            "registry": registry,
            "package": package,
            "args": args,
            "transport": transport,
        }
        if version:
            source["version"] = version
        if entrypoint:
            source["command"] = entrypoint
        return source
    if image:
        return {"type": "image", "image": image, "port": port or 8080}
    if git:
        source = {"type": "git", "repo_url": git}
        for key, value in (("branch", branch), ("ref", ref), ("subdirectory", subdirectory), ("port", port)):
            if value:
                source[key] = value
        return source
    return {"type": "command", "command": command, "args": args, "transport": transport}


@app.command("create")
def servers_create(
    name: str = typer.Argument(..., help="Server name"),
    package: str = typer.Option(None, help="PyPI or npm package of the MCP server"),
    registry: str = typer.Option("pypi", help="pypi or npm"),
    version: str = typer.Option(None, help="Exact package version"),
    entrypoint: str = typer.Option(
        None, help="Entry point the package declares (console script / npm bin) to run, when it has several"
    ),
    image: str = typer.Option(None, help="OCI image serving MCP over streamable HTTP"),
    port: int = typer.Option(None, help="Container port (image: default 8080; git: EXPOSE or 8000)"),
    git: str = typer.Option(None, help="git repository to build (https://...)"),
    branch: str = typer.Option(None, help="git branch or tag (default: the default branch)"),
    ref: str = typer.Option(None, help="exact git commit to build"),
    subdirectory: str = typer.Option(None, help="folder of the repository holding the server"),
    command: str = typer.Option(None, help="Executable on the worker host (administrators only)"),
    arg: list[str] = typer.Option([], help="Argument for the server (repeatable)"),
    transport: str = typer.Option("stdio", help="stdio (bridged) or http"),
    env: list[str] = typer.Option([], help="KEY=VALUE for the server's environment (repeatable)"),
    slug: str = typer.Option(None, help="URL name under /mcp/ (default: from the name)"),
    runtime: str = typer.Option(None, help="process or docker (default: chosen from the source)"),
    cpu: float = typer.Option(None, "--cpu", help="Cores the server may use (default: DEFAULT_CPU_LIMIT)"),
    memory: int = typer.Option(None, "--memory", help="MiB of memory; past it the server is killed"),
    gpu: bool = typer.Option(False, "--gpu", help="Give the server the host's GPUs (docker runtime)"),
) -> None:
    """Register a server. Prints its API key once: store it."""
    env_map: dict[str, str] = {}
    for item in env:
        key, sep, value = item.partition("=")
        if not sep:
            err.print(f"[red]--env {item!r} must be KEY=VALUE[/]")
            raise typer.Exit(2)
        env_map[key] = value
    body: dict[str, Any] = {
        "name": name,
        "source": _source_from_options(
            package, registry, version, image, port, command, arg, transport, entrypoint, git, branch, ref, subdirectory
        ),
        "env": env_map,
    }
    if slug:
        body["slug"] = slug
    if runtime:
        body["runtime"] = runtime
    if cpu is not None:
        body["cpu_limit"] = cpu
    if memory is not None:
        body["memory_limit"] = memory
    if gpu:
        body["use_gpu"] = True
    server = Api().request("POST", "/api/servers", json=body)
    console.print(f"created server [bold]{server['name']}[/] ({server['id']})")
    console.print(f"  gateway URL:    {server['gateway_url']}")
    console.print(f"  API key:        [bold]{server['api_key']}[/]   (shown once)")
    console.print(f"  webhook secret: {server['webhook_secret']}   (shown once)")
    console.print(f"next: mcphost deploy {server['slug']}")


@app.command("list")
def servers_list(as_json: bool = typer.Option(False, "--json", help="Print JSON")) -> None:
    """List your servers (administrators: all servers)."""
    data = Api().request("GET", "/api/servers")
    if as_json:
        console.print_json(data=data)
        return
    table = Table("name", "slug", "status", "source", "id")
    for s in data["data"]:
        src = s["source"]
        label = src.get("package") or src.get("image") or src.get("command") or src.get("repo_url")
        table.add_row(s["name"], s["slug"], s["status"], f"{src['type']}:{label}", s["id"])
    console.print(table)


@app.command("show")
def servers_show(server: str = typer.Argument(..., help="id, slug or name")) -> None:
    """Show a server, its capabilities and recent deployments."""
    client = Api()
    found = client.resolve_server(server)
    detail = client.request("GET", f"/api/servers/{found['id']}")
    caps = client.request("GET", f"/api/servers/{found['id']}/capabilities")
    deployments = client.request("GET", f"/api/servers/{found['id']}/deployments")
    console.print_json(data={"server": detail, "capabilities": caps, "deployments": deployments["data"][:5]})


@app.command("delete")
def servers_delete(
    server: str = typer.Argument(..., help="id, slug or name"),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation"),
) -> None:
    """Stop a server's instances and delete it."""
    client = Api()
    found = client.resolve_server(server)
    if not yes:
        typer.confirm(f"delete server {found['name']} ({found['slug']})?", abort=True)
    result = client.request("DELETE", f"/api/servers/{found['id']}")
    console.print(f"deleting {found['name']} (workflow {result['workflow_id']})")


@app.command("watch")
def servers_watch() -> None:
    """Print each status change of your servers as it happens (Ctrl-C stops)."""
    client = Api()
    names = {s["id"]: s["name"] for s in client.request("GET", "/api/servers")["data"]}
    try:
        for name, data in sse_events(client, "/api/servers/stream"):
            if name == "server":
                if data["id"] not in names and data["status"] != "deleted":
                    names.update({s["id"]: s["name"] for s in client.request("GET", "/api/servers")["data"]})
                label = names.get(data["id"], data["id"])
                console.print(f"{time.strftime('%H:%M:%S')}  {label:<30} {data['status']}")
    except KeyboardInterrupt:
        return
