"""Running the real `mcphost` command against a test platform, as a user would."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx


@dataclass
class CliResult:
    code: int
    out: str
    err: str


@dataclass
class Cli:
    url: str
    token: str
    home: Path

    @classmethod
    async def for_user(cls, client: httpx.AsyncClient, base_url: str, home: Path) -> Cli:
        created = await client.post("/api/tokens", json={"name": "cli-test"})
        assert created.status_code == 201, created.text
        return cls(base_url, created.json()["token"], home)

    async def __call__(self, *args: str, timeout: float = 300, stdin: bytes | None = None) -> CliResult:
        env = dict(
            os.environ,
            MCPHOST_URL=self.url,
            MCPHOST_TOKEN=self.token,
            XDG_CONFIG_HOME=str(self.home),  # never the developer's own CLI login
            COLUMNS="200",
            NO_COLOR="1",
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli.main",
            *args,
            env=env,
            stdin=asyncio.subprocess.PIPE if stdin is not None else None,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout=timeout)
        assert proc.returncode is not None
        return CliResult(proc.returncode, out.decode(), err.decode())
