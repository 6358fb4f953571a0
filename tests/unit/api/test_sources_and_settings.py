from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.routes.servers import slugify
from api.schemas.servers import ServerCreate
from core.settings import Settings, describe_settings_error
from core.sources import (
    CommandSource,
    ImageSource,
    PackageSource,
    default_runtime_for,
    parse_source,
    runtime_accepts,
    runtime_refusal,
    validate_env,
)


@pytest.mark.parametrize(
    "ref",
    ["nginx", "ghcr.io/acme/weather-mcp:1.2", "localhost:5000/a/b@sha256:" + "a" * 64, "127.0.0.1:5000/x/y:latest"],
)
def test_valid_image_references(ref: str) -> None:
    assert ImageSource(image=ref).image == ref


@pytest.mark.parametrize("ref", ["UPPER/case", "a b", "-rm", "x:tag with space", "a@sha256:short", ""])
def test_invalid_image_references(ref: str) -> None:
    with pytest.raises(ValidationError):
        ImageSource(image=ref)


def test_package_names_and_versions_are_checked_per_registry() -> None:
    assert PackageSource(package="mcp-server-time").requirement == "mcp-server-time"
    assert PackageSource(package="mcp-server-time", version="1.0").requirement == "mcp-server-time==1.0"
    npm = PackageSource(registry="npm", package="@modelcontextprotocol/server-everything", version="1.0.0")
    assert npm.requirement == "@modelcontextprotocol/server-everything@1.0.0"
    for bad in ["-e git+https://x", "a b", "../x", ""]:
        with pytest.raises(ValidationError):
            PackageSource(package=bad)
    with pytest.raises(ValidationError):
        PackageSource(package="x", version=">=1; rm -rf /")
    with pytest.raises(ValidationError):
        PackageSource(registry="npm", package="UpperCase")


def test_command_sources_refuse_shell_syntax_and_option_injection() -> None:
    assert CommandSource(command="/usr/bin/python3", args=["-m", "x"]).command == "/usr/bin/python3"
    for bad in ["rm -rf /", "-x", "a;b", "$(id)", "a|b"]:
        with pytest.raises(ValidationError):
            CommandSource(command=bad)
    with pytest.raises(ValidationError):
        CommandSource(command="x", args=["a\x00b"])


def test_discriminated_parse_and_runtime_choice() -> None:
    image = parse_source({"type": "image", "image": "a/b:1"})
    package = parse_source({"type": "package", "package": "p"})
    assert isinstance(image, ImageSource) and isinstance(package, PackageSource)
    npm = parse_source({"type": "package", "registry": "npm", "package": "p"})
    command = parse_source({"type": "command", "command": "/usr/bin/x"})
    assert default_runtime_for(image, "process") == "docker"
    # CONTAINER_RUNTIME=docker means packages run in containers; host commands cannot.
    assert default_runtime_for(package, "docker") == "docker" and default_runtime_for(package, "process") == "process"
    assert default_runtime_for(npm, "docker") == "docker"
    assert default_runtime_for(command, "docker") == "process"
    assert runtime_accepts("docker", image) and not runtime_accepts("process", image)
    assert runtime_accepts("process", package) and runtime_accepts("docker", package)
    assert runtime_accepts("process", npm) and not runtime_accepts("docker", npm)
    assert not runtime_accepts("docker", command) and not runtime_accepts("kubernetes", package)
    refusal = runtime_refusal("docker", npm)
    assert refusal is not None and refusal.startswith(
        "npm packages run on the process runtime; the docker runtime runs PyPI packages and images"
    )
    assert runtime_refusal("docker", package) is None


def test_env_validation() -> None:
    assert validate_env({"API_TOKEN": "x"}) == {"API_TOKEN": "x"}
    for bad in [{"PORT": "1"}, {"MCPHOST_X": "1"}, {"1A": "x"}, {"A-B": "x"}, {"A": "x\x00"}]:
        with pytest.raises(ValueError):
            validate_env(bad)


def test_slugs() -> None:
    assert slugify("My Time Server!") == "my-time-server"
    assert slugify("***") == "server"
    assert len(slugify("x" * 200)) <= 63
    with pytest.raises(ValidationError):
        ServerCreate.model_validate({"name": "a", "slug": "-bad", "source": {"type": "package", "package": "p"}})


KEY = "k" * 40


def test_missing_secrets_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JWT_SECRET", raising=False)
    monkeypatch.delenv("SECRETS_KEY", raising=False)
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None)  # type: ignore[call-arg]
    message = describe_settings_error(info.value)
    assert "JWT_SECRET is required" in message and "SECRETS_KEY is required" in message


def test_weak_secret_and_bad_database_url_are_refused() -> None:
    with pytest.raises(ValidationError, match="at least 32"):
        Settings.model_validate({"jwt_secret": "short", "secrets_key": KEY})
    with pytest.raises(ValidationError, match="SECRETS_KEY needs keys of at least 32"):
        Settings.model_validate({"jwt_secret": "x" * 40, "secrets_key": KEY + ",short"})
    with pytest.raises(ValidationError, match="PostgreSQL"):
        Settings.model_validate({"jwt_secret": "x" * 40, "secrets_key": KEY, "database_url": "mysql://x/y"})
    settings = Settings.model_validate(
        {"jwt_secret": "x" * 40, "secrets_key": KEY, "database_url": "postgresql://u@h/db"}
    )
    assert settings.database_url == "postgresql+asyncpg://u@h/db"
    assert settings.bind_address == "0.0.0.0" and settings.bind_port == 3000
    assert settings.allow_migration_failure is False and settings.container_runtime == "process"
