"""The platform's own processes: the whole stack on one machine, migrations, API, gateway, worker."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.client import err

app = typer.Typer()


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
