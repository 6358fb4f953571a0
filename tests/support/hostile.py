"""The hostile test server as a wheel in a local wheel directory (the platform's PACKAGE_FIND_LINKS)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import zipfile
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from tests.support.components import CACHE
from tests.support.mcp_client import call_tool

NAME = "mcphost-hostile"
VERSION = "1.0.4"
LOCAL_WHEELS = CACHE / "local-wheels"
SOURCE = Path(__file__).parent / "hostile_server" / "mcphost_hostile.py"


def local_wheel(name: str, version: str, source: Path, script: str) -> Path:
    """Write a one-module wheel with a console script into LOCAL_WHEELS, unless this version is there."""
    module = source.stem
    LOCAL_WHEELS.mkdir(parents=True, exist_ok=True)
    LOCAL_WHEELS.chmod(0o755)
    wheel = LOCAL_WHEELS / f"{module}-{version}-py3-none-any.whl"
    if wheel.exists():
        return wheel
    info = f"{module}-{version}.dist-info"
    files = {
        source.name: source.read_bytes(),
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\nRequires-Dist: mcp>=2.3\n"
        ).encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: mcphost-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[console_scripts]\n{script} = {module}:main\n".encode(),
    }
    record = [_record_line(n, data) for n, data in files.items()] + [f"{info}/RECORD,,"]
    # Written aside and renamed into place: another test worker may be writing the same wheel.
    tmp = wheel.with_name(f".{wheel.name}.{os.getpid()}.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, data in files.items():
            zf.writestr(n, data)
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    tmp.chmod(0o644)
    tmp.rename(wheel)
    return wheel


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel() -> Path:
    """The hostile server's wheel."""
    return local_wheel(NAME, VERSION, SOURCE, "mcphost-hostile")


async def attack(url: str, key: str, tool: str, **arguments: Any) -> str:
    """Call one of the hostile server's tools through the gateway; its answer says what it got."""
    return await call_tool(url, key, tool, arguments)


async def attack_may_die(url: str, key: str, tool: str, **arguments: Any) -> str:
    """A call whose server may be killed while answering: the error is the answer."""
    try:
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
            async with Client(streamable_http_client(url, http_client=http), cache=None) as client:
                result = await client.call_tool(tool, arguments)
                return "".join(getattr(c, "text", "") for c in result.content)
    except Exception as exc:  # noqa: BLE001 - any failure of the call is what is being observed
        return f"CALL FAILED: {exc!r}"


async def assert_no_privileges_and_bounded(url: str, key: str, *, pids_limit: int, allocate_mib: int) -> None:
    """No root, no capabilities, setuid inert; a fork bomb stops at the process limit; memory past the
    limit does not get allocated (the server is killed)."""
    who = json.loads(await attack(url, key, "escalate"))
    assert who["setuid"].startswith("DENIED") and who["euid"] != "0", who
    assert who["NoNewPrivs"] == "1" and int(who["CapEff"], 16) == 0 and int(who["CapBnd"], 16) == 0, who
    bomb = json.loads(await attack(url, key, "fork_many", count=10000))
    assert bomb["forked"] < pids_limit and bomb["stopped_by"], bomb
    died = await attack_may_die(url, key, "allocate", mib=allocate_mib)
    assert "ALLOCATED" not in died, died
