"""Whether this host has GPUs to give to servers (docker runtime, NVIDIA devices)."""

from __future__ import annotations

import glob
import shutil
import subprocess
from typing import Any


def gpu_available(settings: Any = None) -> bool:
    """GPU_AVAILABLE when the operator set it; else whether an NVIDIA device is present."""
    configured = getattr(settings, "gpu_available", None)
    if configured is not None:
        return bool(configured)
    if glob.glob("/dev/nvidia[0-9]*"):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    try:
        return subprocess.run([smi, "-L"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
