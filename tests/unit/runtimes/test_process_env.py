"""What a package install or a server process inherits from the worker's environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtimes.process import ProcessExecutor


def test_installers_get_the_hosts_trust_store_and_proxies_but_no_platform_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = {
        "NODE_EXTRA_CA_CERTS": "/etc/ssl/corp.pem",
        "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
        "HTTPS_PROXY": "http://proxy.internal:3128",
        "no_proxy": "localhost,127.0.0.1",
        "npm_config_registry": "https://npm.internal/",
        "JWT_SECRET": "s" * 40,
        "SECRETS_KEY": "k" * 40,
        "DATABASE_URL": "postgresql+asyncpg://mcphost:pw@db/mcphost",
        "AWS_SECRET_ACCESS_KEY": "nope",
    }
    for name, value in host.items():
        monkeypatch.setenv(name, value)
    env = ProcessExecutor(tmp_path)._base_env()
    for name in ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "HTTPS_PROXY", "no_proxy", "npm_config_registry"):
        assert env[name] == host[name]
    for name in ("JWT_SECRET", "SECRETS_KEY", "DATABASE_URL", "AWS_SECRET_ACCESS_KEY"):
        assert name not in env


def test_helper_processes_get_no_platform_secrets() -> None:
    from core.settings import child_environment

    env = child_environment(
        {"PATH": "/usr/bin", "JWT_SECRET": "j" * 40, "secrets_key": "k" * 40, "DATABASE_URL": "postgresql://x"}
    )
    assert env == {"PATH": "/usr/bin"}
