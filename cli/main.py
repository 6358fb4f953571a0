"""The `mcphost` command."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(
    help="MCP Host: build, deploy, serve and govern MCP servers.", no_args_is_help=True, add_completion=False
)
servers_app = typer.Typer(help="Create, list, show and delete servers.", no_args_is_help=True)
app.add_typer(servers_app, name="servers")
console = Console()
err = Console(stderr=True)

TERMINAL = ("running", "failed", "superseded", "stopped", "cancelled", "blocked")


# ---- platform processes --------------------------------------------------------------------------


@app.command()
def up(
    state_dir: Path = typer.Option(Path(".mcphost"), envvar="STATE_DIR", help="Where data, logs and envs live"),
    bind_address: str = typer.Option(
        "127.0.0.1", envvar="BIND_ADDRESS", help="API and gateway listen address (0.0.0.0: every interface)"
    ),
    bind_port: int = typer.Option(3000, envvar="BIND_PORT", help="API listen port"),
    temporal_port: int = typer.Option(7233, help="Port of the embedded Temporal dev server"),
    ui_port: int = typer.Option(8233, help="Port of the Temporal Web UI"),
) -> None:
    """Run the whole platform on this machine: Temporal (with Web UI), Postgres, migrations, API, worker."""
    from cli.up import run_stack

    raise typer.Exit(
        run_stack(
            state_dir=state_dir.resolve(),
            bind_address=bind_address,
            bind_port=bind_port,
            temporal_port=temporal_port,
            ui_port=ui_port,
        )
    )


@app.command()
def migrate() -> None:
    """Apply database migrations (Alembic) to DATABASE_URL."""
    from core.migrate import upgrade
    from core.settings import load_settings_or_exit

    settings = load_settings_or_exit()
    try:
        upgrade(settings.database_url)
    except Exception as exc:
        err.print(f"[red]migration failed:[/] {exc}")
        raise typer.Exit(1) from None
    err.print("database schema is up to date")


admin_app = typer.Typer(
    help="Make administrators on the platform's host (reads DATABASE_URL; needs no account).", no_args_is_help=True
)
app.add_typer(admin_app, name="admin")


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


@admin_app.command("create")
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


@admin_app.command("promote")
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


secrets_app = typer.Typer(
    help="Server secrets (write-only env values, sealed or in Vault) and the sealing key.", no_args_is_help=True
)
app.add_typer(secrets_app, name="secrets")


@secrets_app.command("reseal")
def secrets_reseal() -> None:
    """Re-encrypt every stored config env and webhook secret with the first SECRETS_KEY (after adding a
    new key first); also seals what was written in clear by older versions."""
    import asyncio

    from core.crypto import SecretsKeyError, reseal_all
    from core.settings import load_settings_or_exit

    settings = load_settings_or_exit()
    try:
        servers, deployments = asyncio.run(reseal_all(settings.database_url, settings.env_cipher()))
    except SecretsKeyError as exc:
        err.print(f"[red]{exc}[/]")
        raise typer.Exit(1) from None
    err.print(f"resealed the secrets of {servers} server(s) and the env of {deployments} deployment(s)")


@secrets_app.command("set")
def secrets_set(
    server: str = typer.Argument(..., help="id, slug or name"),
    name: str = typer.Argument(..., help="Environment variable name the server gets it as"),
) -> None:
    """Create or rotate a secret. The value is read from stdin (or asked for, hidden) so it stays out of
    the shell history; the server gets it at its next launch."""
    import sys

    value = sys.stdin.read().removesuffix("\n") if not sys.stdin.isatty() else typer.prompt("value", hide_input=True)
    client = Api()
    found = client.resolve_server(server)
    base = f"/api/servers/{found['id']}/secrets"
    names = {s["name"] for s in client.request("GET", base)["data"]}
    if name in names:
        done = client.request("PUT", f"{base}/{name}", json={"value": value})
        err.print(f"secret {escape(name)} rotated (version {done['version']}); redeploy to hand it out")
    else:
        done = client.request("POST", base, json={"name": name, "value": value})
        err.print(f"secret {escape(name)} created ({done['backend']}); the next launch gets it")


@secrets_app.command("list")
def secrets_list(
    server: str = typer.Argument(..., help="id, slug or name"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """The server's secrets: names, where kept, versions. Values are never shown."""
    client = Api()
    found = client.resolve_server(server)
    listing = client.request("GET", f"/api/servers/{found['id']}/secrets")
    if as_json:
        console.print_json(data=listing)
        return
    table = Table("name", "backend", "version", "vault path", "updated")
    for secret in listing["data"]:
        table.add_row(
            escape(secret["name"]),
            secret["backend"],
            str(secret["version"]),
            escape(secret["vault_path"] or ""),
            secret["updated_at"][:19],
        )
    console.print(table)


@secrets_app.command("rm")
def secrets_rm(
    server: str = typer.Argument(..., help="id, slug or name"),
    name: str = typer.Argument(..., help="The secret's name"),
) -> None:
    """Delete a secret (in Vault: every version). Running instances keep it until their next launch."""
    client = Api()
    found = client.resolve_server(server)
    client.request("DELETE", f"/api/servers/{found['id']}/secrets/{name}")
    err.print(f"secret {escape(name)} deleted")


@secrets_app.command("events")
def secrets_events(
    server: str = typer.Argument(..., help="id, slug or name"),
    name: str = typer.Option(None, "--name", help="Only this secret"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """Who created, rotated or deleted the server's secrets, and which launches read them."""
    client = Api()
    found = client.resolve_server(server)
    params = {"name": name} if name else None
    listing = client.request("GET", f"/api/servers/{found['id']}/secret-events", params=params)
    if as_json:
        console.print_json(data=listing)
        return
    table = Table("at", "name", "action", "version", "by", "deployment")
    for event in listing["data"]:
        table.add_row(
            event["at"][:19],
            escape(event["name"]),
            event["action"],
            str(event["version"] or ""),
            escape(event["actor"]),
            event["deployment_id"] or "",
        )
    console.print(table)


@app.command()
def api(
    migrate_first: bool = typer.Option(True, "--migrate/--no-migrate", help="Apply migrations before serving"),
) -> None:
    """Serve the HTTP API and MCP gateway on BIND_ADDRESS:BIND_PORT."""
    import uvicorn

    from api.app import create_app
    from core.migrate import upgrade
    from core.settings import load_settings_or_exit

    settings = load_settings_or_exit()
    if migrate_first:
        try:
            upgrade(settings.database_url)
        except Exception as exc:
            if not settings.allow_migration_failure:
                err.print(
                    f"[red]migration failed, not starting:[/] {exc}\n(ALLOW_MIGRATION_FAILURE=true starts anyway)"
                )
                raise typer.Exit(1) from None
            err.print(f"[yellow]migration failed, starting anyway (ALLOW_MIGRATION_FAILURE):[/] {exc}")
    uvicorn.run(
        create_app(settings),
        host=settings.bind_address,
        port=settings.bind_port,
        log_level="info",
        proxy_headers=False,
    )


@app.command()
def gateway(
    bind_address: str | None = typer.Option(None, help="Listen address (default: BIND_ADDRESS)"),
    bind_port: int | None = typer.Option(None, help="Listen port (default: BIND_PORT)"),
    use_uvicorn: bool = typer.Option(
        False, "--uvicorn", help="Serve through uvicorn instead of the gateway's own HTTP server"
    ),
    fd: int | None = typer.Option(
        None, "--fd", help="Serve on this already bound, listening socket (socket activation) instead of a port"
    ),
) -> None:
    """Serve only the MCP gateway (/mcp/<slug>, /healthz, /metrics), to scale it apart from the API.

    It needs DATABASE_URL (routes, keys, metering; migrations are the API's job) and nothing else of the
    control plane; changes made through the API reach it at once by Postgres NOTIFY. It runs on its own
    lean HTTP/1.1 server (a fifth to a third less CPU per call than under uvicorn); SIGTERM lets requests
    in flight finish for up to GATEWAY_SHUTDOWN_GRACE_SECONDS."""
    import logging

    from core.settings import load_settings_or_exit

    settings = load_settings_or_exit()
    host = bind_address or settings.bind_address
    port = bind_port or settings.bind_port
    if use_uvicorn:
        import uvicorn

        from gateway.app import create_gateway_app

        uvicorn.run(
            create_gateway_app(settings),
            host=host,
            port=port,
            fd=fd,
            log_level="info",
            proxy_headers=False,
            access_log=False,
        )
        return
    import asyncio

    from gateway.app import serve_gateway

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvicorn[standard] brings it
        asyncio.run(serve_gateway(settings, host, port, fd=fd))
    else:
        uvloop.run(serve_gateway(settings, host, port, fd=fd))


@app.command()
def worker() -> None:
    """Run a Temporal worker for the platform's workflows and activities."""
    from worker.main import main as worker_main

    worker_main()


# ---- API client ----------------------------------------------------------------------------------


def config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mcphost" / "config.json"


def load_config() -> dict[str, Any]:
    path = config_path()
    if not path.exists():
        return {}
    owner_only(path)
    return json.loads(path.read_text())


def owner_only(path: Path) -> None:
    """Take group and other permissions away from a file or directory that holds a credential."""
    try:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            path.chmod(mode & 0o700)
    except OSError:
        pass  # not ours to change (a shared config mounted read-only): the token still works


def save_config(data: dict[str, Any]) -> None:
    """Keep the CLI's personal API token readable by this user alone: 0700 directory, 0600 file."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    owner_only(path.parent)
    # Written beside the file and renamed over it: an existing file keeps its mode when truncated, and a
    # reader never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), 0o600)  # a leftover temporary file would keep its old mode
            json.dump(data, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class Api:
    def __init__(self, url: str | None = None, token: str | None = None) -> None:
        config = load_config()
        self.url = (url or os.environ.get("MCPHOST_URL") or config.get("url") or "http://127.0.0.1:3000").rstrip("/")
        self.token = token or os.environ.get("MCPHOST_TOKEN") or config.get("token")
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=30.0)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            self.unreachable(exc)
        self.check(response)
        return response.json() if response.content else None

    def unreachable(self, exc: httpx.HTTPError) -> NoReturn:
        err.print(f"[red]cannot reach MCP Host at {self.url}:[/] {exc}\nIs it running? (make up)")
        raise typer.Exit(2) from None

    def check(self, response: httpx.Response) -> None:
        """Exit with the API's reason when the response is an error (a streamed one is read first)."""
        if response.status_code >= 400 and not response.is_stream_consumed:
            response.read()
        if response.status_code == 401:
            err.print("[red]not logged in or session expired:[/] run `mcphost login`")
            raise typer.Exit(2)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            if isinstance(detail, list):
                detail = "; ".join(f"{'.'.join(str(p) for p in d.get('loc', [])[1:])}: {d.get('msg')}" for d in detail)
            err.print(f"[red]error {response.status_code}:[/] {detail}")
            raise typer.Exit(1)

    def resolve_server(self, ref: str) -> dict[str, Any]:
        """A server by id, slug or name."""
        servers = self.request("GET", "/api/servers")["data"]
        for server in servers:
            if ref in (server["id"], server["slug"], server["name"]):
                return server  # type: ignore[no-any-return]
        err.print(f"[red]no server {ref!r}[/] (see `mcphost servers list`)")
        raise typer.Exit(1)


@app.command()
def login(
    email: str = typer.Option(..., prompt=True),
    password: str = typer.Option(..., prompt=True, hide_input=True),
    url: str = typer.Option(None, envvar="MCPHOST_URL", help="API base URL (default http://127.0.0.1:3000)"),
) -> None:
    """Log in and keep a personal API token for the CLI in ~/.config/mcphost/config.json."""
    client = Api(url=url, token="")
    session = client.request("POST", "/api/login", json={"email": email, "password": password})
    authed = Api(url=client.url, token=session["access_token"])
    token = authed.request("POST", "/api/tokens", json={"name": f"cli on {socket.gethostname()}"[:100]})
    save_config({"url": client.url, "token": token["token"]})
    console.print(f"logged in to {client.url} as {email}")


@app.command()
def register(
    email: str = typer.Option(..., prompt=True),
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True),
    url: str = typer.Option(None, envvar="MCPHOST_URL"),
    setup_token_file: Path = typer.Option(
        None,
        "--setup-token-file",
        exists=True,
        dir_okay=False,
        help="Claim a new installation as its administrator with its one-time setup token "
        "(<STATE_DIR>/setup-token; `mcphost up` says where)",
    ),
) -> None:
    """Create an account, then log in. With --setup-token-file it is the installation's administrator."""
    client = Api(url=url, token="")
    body = {"email": email, "password": password}
    if setup_token_file is not None:
        body["setup_token"] = setup_token_file.read_text().strip()
    client.request("POST", "/api/register", json=body)
    # The answer does not say whether the email already had an account; logging in shows it is this one.
    login(email=email, password=password, url=client.url)
    me = Api(url=client.url, token=load_config()["token"]).request("GET", "/api/me")
    console.print(f"account: {me['email']} ({me['role']})")
    if me["role"] != "admin" and setup_token_file is None:
        console.print("(a new installation's administrator registers with --setup-token-file)")


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


@servers_app.command("create")
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


@servers_app.command("list")
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


@servers_app.command("show")
def servers_show(server: str = typer.Argument(..., help="id, slug or name")) -> None:
    """Show a server, its capabilities and recent deployments."""
    client = Api()
    found = client.resolve_server(server)
    detail = client.request("GET", f"/api/servers/{found['id']}")
    caps = client.request("GET", f"/api/servers/{found['id']}/capabilities")
    deployments = client.request("GET", f"/api/servers/{found['id']}/deployments")
    console.print_json(data={"server": detail, "capabilities": caps, "deployments": deployments["data"][:5]})


@servers_app.command("delete")
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
    try:
        with client.http.stream(
            "GET", f"/api/deployments/{deployment_id}/events", timeout=httpx.Timeout(10.0, read=30.0)
        ) as response:
            if response.status_code == 200:
                event = ""
                for line in response.iter_lines():
                    if line.startswith("event:"):
                        event = line.partition(":")[2].strip()
                    elif line.startswith("data:") and event == "deployment":
                        detail = json.loads(line.partition(":")[2])
                        _print_steps(detail, seen)
                    elif line.startswith("data:") and event == "end" and detail:
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
    if detail["status"] == "running":
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
    if detail["status"] == "running":
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


def sse_events(client: Api, path: str, params: dict[str, Any] | None = None) -> Iterator[tuple[str, Any]]:
    """Events of a server-sent event stream, until the server ends it (or Ctrl-C)."""
    try:
        with client.http.stream("GET", path, params=params, timeout=httpx.Timeout(10.0, read=None)) as response:
            if response.status_code != 200:
                response.read()
                client.check(response)
            name, data = "message", []
            for line in response.iter_lines():
                if line.startswith("event:"):
                    name = line.partition(":")[2].strip()
                elif line.startswith("data:"):
                    data.append(line.partition(":")[2].strip())
                elif not line and data:
                    yield name, json.loads("\n".join(data))
                    name, data = "message", []
    except httpx.HTTPError as exc:
        client.unreachable(exc)


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


@servers_app.command("watch")
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


# ---- remediation -------------------------------------------------------------------------------

remediation_app = typer.Typer(
    help="Remediation playbooks and their runs: create, bind, run, list, approve, reject, cancel, watch.",
    no_args_is_help=True,
)
app.add_typer(remediation_app, name="remediation")
REMEDIATION = "/api/trust/remediation"


def _json_arg(value: str, option: str) -> Any:
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


def _print_remediation(run: dict[str, Any]) -> None:
    ended = f" exit {run['exit_code']}" if run["exit_code"] is not None else ""
    reason = f" ({escape(run['reason'])})" if run.get("reason") else ""
    step = f" at {escape(run['current_step'])}" if run.get("current_step") else ""
    console.print(f"run {run['id']} [bold]{run['status']}[/]{step}{ended}{reason} version {run['version']}")
    for result in run["results"]:
        console.print(f"  {escape(result['step'])}: {result['status']} {escape(result['reason'] or '')}")


@remediation_app.command("create")
def remediation_create(
    name: str = typer.Argument(..., help="The playbook's name"),
    playbook: str = typer.Option(
        ..., "--playbook", help='{"steps": [...], "approval": {...}, "sla_seconds": N} as JSON, or @FILE holding it'
    ),
) -> None:
    """Create a playbook (see docs/deployments.md, Remediation)."""
    body = _json_arg(playbook, "--playbook")
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


@remediation_app.command("bind")
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


@remediation_app.command("run")
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


@remediation_app.command("list")
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


@remediation_app.command("approve")
def remediation_approve(
    run: str = typer.Argument(..., help="The run's id"),
    comment: str = typer.Option("", "-m", "--comment", help="Why (kept in the run's artifacts)"),
) -> None:
    """Approve a run awaiting approval."""
    _change(run, "approve", comment)


@remediation_app.command("reject")
def remediation_reject(
    run: str = typer.Argument(..., help="The run's id"),
    comment: str = typer.Option("", "-m", "--comment", help="Why (kept in the run's artifacts)"),
) -> None:
    """Reject a run awaiting approval: it ends without running a step."""
    _change(run, "reject", comment)


@remediation_app.command("cancel")
def remediation_cancel(run: str = typer.Argument(..., help="The run's id")) -> None:
    """Stop a run after the step under way."""
    _change(run, "cancel")


@remediation_app.command("watch")
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


# ---- files in a server's /data ------------------------------------------------------------------

files_app = typer.Typer(help="List, upload, download and delete the files in a server's /data.", no_args_is_help=True)
app.add_typer(files_app, name="files")


def _files_url(server_id: str, remote: str = "") -> str:
    base = f"/api/servers/{server_id}/files"
    return f"{base}/{quote(remote.lstrip('/'), safe='/')}" if remote else base


@files_app.command("ls")
def files_ls(
    server: str = typer.Argument(..., help="id, slug or name"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """List the files in the server's /data."""
    client = Api()
    found = client.resolve_server(server)
    listing = client.request("GET", _files_url(found["id"]))
    if as_json:
        console.print_json(data=listing)
        return
    table = Table("path", "bytes", "modified")
    for item in listing["data"]:
        table.add_row(escape(item["path"]), str(item["size"]), item["modified_at"][:19])
    console.print(table)
    console.print(f"{listing['total_bytes']} of {listing['quota_bytes']} bytes used")


@files_app.command("put")
def files_put(
    server: str = typer.Argument(..., help="id, slug or name"),
    local: Path = typer.Argument(..., exists=True, dir_okay=False, readable=True, help="File to upload"),
    remote: str = typer.Argument(None, help="Path under /data (default: the file's name)"),
) -> None:
    """Upload a file to the server's /data, replacing any file at that path."""
    client = Api()
    found = client.resolve_server(server)
    with local.open("rb") as fh:
        stored = client.request(
            "POST",
            _files_url(found["id"], remote or local.name),
            content=fh,
            headers={"Content-Type": "application/octet-stream"},
            timeout=httpx.Timeout(30.0, write=None),
        )
    console.print(f"stored /data/{escape(stored['path'])} ({stored['size']} bytes)")


@files_app.command("get")
def files_get(
    server: str = typer.Argument(..., help="id, slug or name"),
    remote: str = typer.Argument(..., help="Path under /data"),
    output: Path = typer.Option(None, "--output", "-o", help="Where to write it (default: its name; - for stdout)"),
) -> None:
    """Download a file from the server's /data."""
    client = Api()
    found = client.resolve_server(server)
    target = output or Path(remote.rstrip("/").rsplit("/", 1)[-1])
    try:
        with client.http.stream("GET", _files_url(found["id"], remote), timeout=httpx.Timeout(30.0, read=None)) as r:
            client.check(r)
            if str(target) == "-":
                out = typer.get_binary_stream("stdout")
                for chunk in r.iter_bytes():
                    out.write(chunk)
                out.flush()
                return
            # Written beside the target and renamed over it, so a failed download leaves no half file.
            tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
            try:
                with tmp.open("wb") as fh:
                    for chunk in r.iter_bytes():
                        fh.write(chunk)
                tmp.replace(target)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
    except httpx.HTTPError as exc:
        client.unreachable(exc)
    err.print(f"wrote {escape(str(target))}")


@files_app.command("rm")
def files_rm(
    server: str = typer.Argument(..., help="id, slug or name"),
    remote: str = typer.Argument(..., help="Path under /data: a file, or an empty directory"),
) -> None:
    """Delete a file (or an empty directory) from the server's /data."""
    client = Api()
    found = client.resolve_server(server)
    client.request("DELETE", _files_url(found["id"], remote))
    console.print(f"deleted /data/{escape(remote)}")


keys_app = typer.Typer(help="A server's named gateway keys: list, create (shown once), revoke.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("list")
def keys_list(
    server: str = typer.Argument(..., help="id, slug or name"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """The server's named keys (values are never shown again), revoked ones included."""
    client = Api()
    found = client.resolve_server(server)
    listing = client.request("GET", f"/api/servers/{found['id']}/keys")
    if as_json:
        console.print_json(data=listing)
        return
    table = Table("name", "prefix", "tools", "expires", "revoked")
    for key in listing["data"]:
        tools = ", ".join(key["tools"]) if key["tools"] is not None else "all"
        table.add_row(
            escape(key["name"]),
            key["prefix"],
            escape(tools),
            (key["expires_at"] or "never")[:19],
            (key["revoked_at"] or "")[:19],
        )
    console.print(table)


@keys_app.command("create")
def keys_create(
    server: str = typer.Argument(..., help="id, slug or name"),
    name: str = typer.Argument(..., help="A name unique among the server's live keys"),
    tool: list[str] = typer.Option(None, "--tool", help="Allow only this tool (repeat for more); default: all"),
    expires_in_days: float = typer.Option(None, "--expires-in-days", help="Expire after this many days"),
) -> None:
    """Create a gateway key; it is printed once."""
    client = Api()
    found = client.resolve_server(server)
    body: dict[str, Any] = {"name": name}
    if tool:
        body["tools"] = tool
    if expires_in_days is not None:
        body["expires_in_days"] = expires_in_days
    created = client.request("POST", f"/api/servers/{found['id']}/keys", json=body)
    console.print(f"key {escape(created['name'])!r} for {escape(found['slug'])} (shown once, keep it):")
    console.print(created["api_key"], markup=False, highlight=False)


@keys_app.command("revoke")
def keys_revoke(
    server: str = typer.Argument(..., help="id, slug or name"),
    name: str = typer.Argument(..., help="The key's name (or id)"),
) -> None:
    """Revoke a key: it stops working at once on every gateway process."""
    client = Api()
    found = client.resolve_server(server)
    listing = client.request("GET", f"/api/servers/{found['id']}/keys")["data"]
    match = [k for k in listing if k["revoked_at"] is None and name in (k["name"], k["id"])]
    if not match:
        err.print(f"[red]no live key named {escape(name)!r} on {escape(found['slug'])}[/]")
        raise typer.Exit(1)
    client.request("DELETE", f"/api/servers/{found['id']}/keys/{match[0]['id']}")
    console.print(f"revoked {escape(match[0]['name'])!r}")


eval_app = typer.Typer(
    help="Evaluation tests of a server: add, list, remove, run them against a revision, see results and rankings.",
    no_args_is_help=True,
)
app.add_typer(eval_app, name="eval")
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


@eval_app.command("add")
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


@eval_app.command("tests")
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


@eval_app.command("rm")
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


@eval_app.command("run")
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
        if detail["run"]["status"] not in ("pending", "running"):
            break
        if time.monotonic() > deadline:
            err.print(f"[yellow]still {detail['run']['status']} after {timeout:g} s[/]; see `mcphost eval results`")
            raise typer.Exit(1)
        time.sleep(0.5)
    _print_results(detail)
    if detail["run"]["status"] != "passed":
        raise typer.Exit(1)


@eval_app.command("results")
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


@eval_app.command("certifications")
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


@eval_app.command("board")
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


approvals_app = typer.Typer(help="Governance runs waiting on you: list, show, approve, reject.", no_args_is_help=True)
app.add_typer(approvals_app, name="approvals")


def _print_run(run: dict[str, Any]) -> None:
    console.print(
        f"run {run['id']}: [bold]{run['status']}[/] ({escape(run['subject'])}, tier {escape(run['tier'])}); "
        f"step {escape(run['current_step'] or '-')}" + (f"; {escape(run['reason'])}" if run["reason"] else "")
    )
    for entry in run["audit"]:
        mark = "" if entry["accepted"] else "[red]refused[/] "
        who = escape(entry["actor"] or "platform")
        console.print(f"  {entry['created_at'][:19]}  {mark}{entry['action']:<12} {who:<30} {escape(entry['comment'])}")


@approvals_app.command("list")
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


@approvals_app.command("show")
def approvals_show(run: str = typer.Argument(..., help="The governance run's id")) -> None:
    """A governance run with its audit trail."""
    _print_run(Api().request("GET", f"/api/governance/runs/{run}"))


def _vote(path: str, comment: str) -> None:
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


@approvals_app.command("approve")
def approvals_approve(
    run: str = typer.Argument(..., help="The governance run's id"),
    comment: str = typer.Option("", "-m", "--comment", help="Why (kept in the audit trail)"),
) -> None:
    """Approve the run's open approval step."""
    _vote(f"/api/governance/runs/{run}/approve", comment)


@approvals_app.command("reject")
def approvals_reject(
    run: str = typer.Argument(..., help="The governance run's id"),
    comment: str = typer.Option("", "-m", "--comment", help="Why (kept in the audit trail)"),
) -> None:
    """Reject the run's open approval step (this rejects the run)."""
    _vote(f"/api/governance/runs/{run}/reject", comment)


promote_app = typer.Typer(
    help="Promotion tracks: create and list tracks, promote a digest into a stage, watch, approve, abort, "
    "reject a digest, hold auto-promotion, roll a stage back, history.",
    no_args_is_help=True,
)
app.add_typer(promote_app, name="promote")


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


@promote_app.command("tracks")
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


@promote_app.command("create-track")
def promote_create_track(
    name: str = typer.Argument(..., help="The track's name"),
    stages: str = typer.Option(
        ..., "--stages", help="The stages as a JSON list, or @FILE holding it (see docs/release-trains.md, Promotions)"
    ),
) -> None:
    """Create a track from its stages (in order), e.g. --stages @stages.json."""
    parsed = _json_arg(stages, "--stages")
    track = Api().request("POST", "/api/promotions/tracks", json={"name": name, "stages": parsed})
    console.print(
        f"track {track['id']} [bold]{escape(track['name'])}[/]: " + " -> ".join(s["name"] for s in track["stages"])
    )


@promote_app.command("delete-track")
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


@promote_app.command("schedule")
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


@promote_app.command("history")
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


@promote_app.command("show")
def promote_show(promotion: str = typer.Argument(..., help="The promotion's id")) -> None:
    _print_promotion(Api().request("GET", f"/api/promotions/{promotion}"))


@promote_app.command("watch")
def promote_watch(promotion: str = typer.Argument(..., help="The promotion's id")) -> None:
    """Follow a promotion until it ends (exit 1 unless it ends active)."""
    client = Api()
    _follow_promotion(client, client.request("GET", f"/api/promotions/{promotion}"))


@promote_app.command("approve")
def promote_approve(
    promotion: str = typer.Argument(..., help="The promotion's id"),
    comment: str = typer.Option("", "-m", "--comment", help="Why (kept in the audit trail)"),
) -> None:
    """Approve the promotion's open approval step."""
    _vote(f"/api/promotions/{promotion}/approve", comment)


@promote_app.command("reject")
def promote_reject(
    promotion: str = typer.Argument(..., help="The promotion's id"),
    comment: str = typer.Option("", "-m", "--comment", help="Why (kept in the audit trail)"),
) -> None:
    """Reject the promotion at its open approval step."""
    _vote(f"/api/promotions/{promotion}/reject", comment)


@promote_app.command("abort")
def promote_abort(promotion: str = typer.Argument(..., help="The promotion's id")) -> None:
    """Abort a promotion under way (its deployments are cancelled; what served keeps serving)."""
    Api().request("POST", f"/api/promotions/{promotion}/abort")
    console.print(f"aborting promotion {promotion}")


@promote_app.command("reject-digest")
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


@promote_app.command("hold")
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


@promote_app.command("rollback")
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


def main() -> None:
    app(prog_name="mcphost")


if __name__ == "__main__":
    main()
