"""The hostile test server as a wheel in a local wheel directory (the platform's PACKAGE_FIND_LINKS)."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

from tests.support.components import CACHE

NAME = "mcphost-hostile"
VERSION = "1.0.2"
LOCAL_WHEELS = CACHE / "local-wheels"
SOURCE = Path(__file__).parent / "hostile_server" / "mcphost_hostile.py"


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build_wheel() -> Path:
    """Write the wheel (a zip with the module and its metadata) unless this version is there already."""
    LOCAL_WHEELS.mkdir(parents=True, exist_ok=True)
    LOCAL_WHEELS.chmod(0o755)
    wheel = LOCAL_WHEELS / f"mcphost_hostile-{VERSION}-py3-none-any.whl"
    if wheel.exists():
        return wheel
    info = f"mcphost_hostile-{VERSION}.dist-info"
    files = {
        "mcphost_hostile.py": SOURCE.read_bytes(),
        f"{info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {NAME}\nVersion: {VERSION}\nRequires-Dist: mcp>=2.3\n"
        ).encode(),
        f"{info}/WHEEL": b"Wheel-Version: 1.0\nGenerator: mcphost-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": b"[console_scripts]\nmcphost-hostile = mcphost_hostile:main\n",
    }
    record = [_record_line(name, data) for name, data in files.items()] + [f"{info}/RECORD,,"]
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", "\n".join(record) + "\n")
    tmp.chmod(0o644)
    tmp.rename(wheel)
    return wheel
