"""docker-compose.yml and the platform Dockerfile stay in step with the code they run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import typer
import yaml

from cli.main import app
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
PLATFORM = {name: svc for name, svc in COMPOSE["services"].items() if svc.get("image") == "mcphost:latest"}


def _interpolate(value: str) -> str:
    # ${NAME:?message} must be given by the operator; ${NAME:-default} has a default.
    value = re.sub(r"\$\{[A-Z_]+:\?[^}]*\}", "x" * 40, value)
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _environment(service: dict[str, Any]) -> dict[str, str]:
    return {k: _interpolate(str(v)) for k, v in service["environment"].items()}


def test_platform_services_run_existing_commands_with_existing_options() -> None:
    assert set(PLATFORM) == {"migrate", "api", "worker"}
    group = typer.main.get_command(app)
    for name, service in PLATFORM.items():
        program, command, *flags = service["command"]
        assert program == "mcphost", name
        assert command in group.commands, f"{name}: mcphost has no command {command!r}"  # type: ignore[attr-defined]
        known = {opt for p in group.commands[command].params for opt in (*p.opts, *p.secondary_opts)}  # type: ignore[attr-defined]
        assert set(flags) <= known, f"{name}: unknown options {set(flags) - known}"


def test_platform_environment_is_valid_settings(monkeypatch: Any) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for name, service in PLATFORM.items():
        env = _environment(service)
        assert set(env) <= fields, f"{name}: not settings: {set(env) - fields}"
        for key in list(Settings.model_fields):
            monkeypatch.delenv(key.upper(), raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings(_env_file=None)  # type: ignore[call-arg]
        assert settings.container_runtime == "docker"


def test_platform_reaches_what_it_needs_on_the_hosts_loopback() -> None:
    # MCP server containers publish on the host's 127.0.0.1 only, so the gateway and the health checks
    # must share the host's network, and what they connect to must be published on loopback.
    published = {
        int(port.split(":")[1]): name
        for name, svc in COMPOSE["services"].items()
        for port in svc.get("ports", [])
        if port.startswith("127.0.0.1:")
    }
    for name, service in PLATFORM.items():
        assert service["network_mode"] == "host", name
        assert "ports" not in service, f"{name}: ports mean nothing on the host network"
        env = _environment(service)
        database = urlsplit(env["DATABASE_URL"])
        assert database.hostname == "127.0.0.1" and published.get(database.port or 0) == "postgres"
        host, _, port = env["TEMPORAL_ADDRESS"].partition(":")
        assert host == "127.0.0.1" and published.get(int(port)) == "temporal"
        registry = env["REGISTRY"].split("/")[0]
        assert published.get(int(registry.partition(":")[2])) == "registry"


def test_platform_image_holds_every_package_the_distribution_ships() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = set(re.findall(r"^COPY (\w+) \1/$", dockerfile, flags=re.M))
    pyproject = (ROOT / "pyproject.toml").read_text()
    shipped = set(re.findall(r'"(\w+)\*"', pyproject))
    assert shipped and shipped | {"migrations"} <= copied


def test_worker_can_be_scaled() -> None:
    # `--scale worker=N` names the copies itself; a fixed container name would refuse the second one.
    assert "container_name" not in COMPOSE["services"]["worker"]
    assert "container_name" not in COMPOSE["x-platform"]
