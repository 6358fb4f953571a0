"""docker-compose.yml and the platform Dockerfile stay in step with the code they run."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import typer
import yaml

from cli.main import app
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
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


LOOPBACK = ("127.0.0.1", "::1", "[::1]", "localhost")


def _published_host_ip(port: Any) -> str | None:
    """The host address a `ports` entry publishes on; None for every interface (the engine's default)."""
    if isinstance(port, dict):
        return str(port["host_ip"]) if port.get("host_ip") else None
    text = str(port)
    if text.startswith("["):
        return text[: text.index("]") + 1]
    parts = text.split(":")
    return parts[0] if len(parts) == 3 else None


def test_nothing_is_published_beyond_the_hosts_loopback() -> None:
    # The API (host network, BIND_ADDRESS) is the one way in; Postgres, Temporal, its UI and the registry
    # are for the platform's own processes and the operator on this machine.
    for name, service in COMPOSE["services"].items():
        if name not in PLATFORM:
            assert service.get("network_mode") != "host", f"{name}: on the host network it listens everywhere"
        for port in service.get("ports", []):
            assert _published_host_ip(port) in LOOPBACK, f"{name} publishes {port!r} on every interface"
    assert [_published_host_ip(p) for p in COMPOSE["services"]["temporal-ui"]["ports"]] == ["127.0.0.1"]


def test_the_temporal_ui_is_read_only_unless_the_operator_asks() -> None:
    env = {k: _interpolate(str(v)) for k, v in COMPOSE["services"]["temporal-ui"]["environment"].items()}
    assert env["TEMPORAL_DISABLE_WRITE_ACTIONS"] == "true"


def _host_path(service: dict[str, Any], container_path: str, volumes: dict[str, Path]) -> Path:
    """Where a path inside a service's container is, given a directory standing in for each named volume."""
    for mount in service.get("volumes", []):
        source, _, rest = str(mount).partition(":")
        target = rest.split(":")[0]
        if source in volumes and container_path.startswith(target.rstrip("/") + "/"):
            return volumes[source] / container_path[len(target.rstrip("/")) + 1 :]
    raise AssertionError(f"{container_path} is on no named volume of the service")


def test_the_registry_takes_only_the_credentials_the_worker_is_given(tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess

    import httpx

    from builds.registry import load_dockerconfig, split_registry
    from tests.support.components import free_port, require, terminate
    from tests.support.registry import available

    services = COMPOSE["services"]
    registry, init, worker = services["registry"], services["registry-auth"], services["worker"]
    registry_env = {k: str(v) for k, v in registry["environment"].items()}
    assert registry_env["REGISTRY_AUTH"] == "htpasswd"
    assert registry.get("depends_on", {}).get("registry-auth") == {"condition": "service_completed_successfully"}
    assert worker["depends_on"].get("registry-auth") == {"condition": "service_completed_successfully"}

    # The init step, run as compose runs it (`$$` is compose's escape for `$`), on stand-ins for the volumes.
    volumes = {name: tmp_path / name for name in COMPOSE["volumes"]}
    for directory in volumes.values():
        directory.mkdir()
    init_env = {k: _interpolate(str(v)) for k, v in init["environment"].items()}
    password = init_env["REGISTRY_PASSWORD"]
    for key in ("HTPASSWD_FILE", "DOCKERCONFIG_FILE"):
        init_env[key] = str(_host_path(init, init_env[key], volumes))
    require(shutil.which("htpasswd") is not None, "htpasswd (apt-get install apache2-utils)")
    script = init["command"][0].replace("$$", "$")
    subprocess.run([*init["entrypoint"], script], env={"PATH": os.environ["PATH"], **init_env}, check=True)

    # The worker finds credentials for REGISTRY's endpoint in the file the init step wrote for it.
    platform_env = _environment(worker)
    dockerconfig = _host_path(worker, platform_env["REGISTRY_AUTH_DOCKERCONFIG"], volumes)
    assert dockerconfig.stat().st_mode & 0o077 == 0
    credentials = load_dockerconfig(dockerconfig, split_registry(platform_env["REGISTRY"])[0])
    assert credentials is not None and credentials.password == password

    # A real registry configured by the service's environment refuses anyone without them.
    require(available(), "docker-registry (apt-get install docker-registry)")
    htpasswd = _host_path(registry, registry_env["REGISTRY_AUTH_HTPASSWD_PATH"], volumes)
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem: {{rootdirectory: {tmp_path / 'storage'}}}\n")
    env = {**os.environ, **registry_env, "REGISTRY_AUTH_HTPASSWD_PATH": str(htpasswd)}
    env["REGISTRY_HTTP_ADDR"] = f"127.0.0.1:{port}"
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        url = f"http://127.0.0.1:{port}/v2/"
        answer = None
        for _ in range(100):
            try:
                answer = httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert answer is not None, "the registry did not start"
        assert answer.status_code == 401
        assert httpx.get(url, auth=("mcphost", "wrong"), timeout=5).status_code == 401
        assert httpx.get(url, auth=(credentials.username, credentials.password), timeout=5).status_code == 200
    finally:
        terminate(proc)
