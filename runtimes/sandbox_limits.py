"""The resource limits of a process sandbox: the cgroup (v2 or v1) a launcher puts itself into, the
rlimits that stand in where cgroups are not writable, the memory-limit kills it reports, and the removal
of a sandbox's cgroups once its instance is gone.

Imported by the launcher (`python -I -m runtimes.sandbox`), which runs as root: standard library only.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

from runtimes.sandbox_plan import SandboxPlan

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_GROUP = "mcphost"


def cgroup_mode() -> str:
    if os.geteuid() != 0:
        return "rlimit"
    controllers = CGROUP_ROOT / "cgroup.controllers"
    if controllers.exists() and "memory" in controllers.read_text().split() and os.access(CGROUP_ROOT, os.W_OK):
        return "cgroup-v2"
    if (CGROUP_ROOT / "memory").is_dir() and os.access(CGROUP_ROOT / "memory", os.W_OK):
        return "cgroup-v1"
    return "rlimit"


class Limits:
    """The cgroup (v2 or v1) a sandbox runs in, or the rlimits that stand in for it."""

    def __init__(self, plan: SandboxPlan) -> None:
        self.plan = plan
        self.mode = cgroup_mode()
        self.dirs: list[Path] = []
        self.oom_before = 0

    def _v2(self) -> None:
        parent = CGROUP_ROOT / CGROUP_GROUP
        parent.mkdir(exist_ok=True)
        for level in (CGROUP_ROOT, parent):
            enabled = set((level / "cgroup.subtree_control").read_text().split())
            available = set((level / "cgroup.controllers").read_text().split())
            wanted = {"memory", "pids", "cpu"} & available - enabled
            if wanted:
                (level / "cgroup.subtree_control").write_text(" ".join(f"+{c}" for c in sorted(wanted)))
        group = parent / self.plan.cgroup
        group.mkdir(exist_ok=True)
        if self.plan.memory_mib:
            (group / "memory.max").write_text(str(self.plan.memory_mib * 1024 * 1024))
            if (group / "memory.swap.max").exists():
                (group / "memory.swap.max").write_text("0")
        if self.plan.pids and (group / "pids.max").exists():
            (group / "pids.max").write_text(str(self.plan.pids))
        if self.plan.cpu and (group / "cpu.max").exists():
            (group / "cpu.max").write_text(f"{int(self.plan.cpu * 100000)} 100000")
        self.dirs = [group]

    def _v1(self) -> None:
        def group(controller: str) -> Path | None:
            root = CGROUP_ROOT / controller
            if not root.is_dir() or not os.access(root, os.W_OK):
                return None
            path = root / CGROUP_GROUP / self.plan.cgroup
            path.mkdir(parents=True, exist_ok=True)
            self.dirs.append(path)
            return path

        memory = group("memory")
        if memory is not None and self.plan.memory_mib:
            limit = str(self.plan.memory_mib * 1024 * 1024)
            (memory / "memory.limit_in_bytes").write_text(limit)
            memsw = memory / "memory.memsw.limit_in_bytes"
            if memsw.exists():
                try:
                    memsw.write_text(limit)
                except OSError:
                    pass
        pids = group("pids")
        if pids is not None and self.plan.pids:
            (pids / "pids.max").write_text(str(self.plan.pids))
        cpu = group("cpu")
        if cpu is not None and self.plan.cpu:
            (cpu / "cpu.cfs_period_us").write_text("100000")
            (cpu / "cpu.cfs_quota_us").write_text(str(int(self.plan.cpu * 100000)))

    def enter(self) -> None:
        """Put this launcher (and so everything it starts) into the limits."""
        try:
            if self.mode == "cgroup-v2":
                self._v2()
            elif self.mode == "cgroup-v1":
                self._v1()
            for path in self.dirs:
                (path / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            print(f"mcphost sandbox: cgroup limits unavailable ({exc}); using rlimits", file=sys.stderr)
            self.mode = "rlimit"
        self.oom_before = self.oom_kills()

    def child_rlimits(self) -> None:
        """In the child before exec: rlimits that hold whatever the cgroup mode (a per-uid process count),
        and the memory bound where no cgroup enforces it."""
        if self.plan.pids:
            resource.setrlimit(resource.RLIMIT_NPROC, (self.plan.pids, self.plan.pids))
        if self.mode == "rlimit" and self.plan.memory_mib:
            limit = self.plan.memory_mib * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def oom_kills(self) -> int:
        for path in self.dirs:
            for name in ("memory.events", "memory.oom_control"):
                events = path / name
                if events.exists():
                    for line in events.read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            return int(value)
        return 0


def remove_cgroup(name: str, wait: float = 3.0) -> None:
    """Remove a sandbox's cgroups once nothing runs in them (the platform calls this when it removes an
    instance; a launcher never does, as another session of the same server may be entering them). The
    last processes of a stopped instance may take a moment to leave: wait a little for them."""
    deadline = time.monotonic() + wait
    for path in (CGROUP_ROOT / CGROUP_GROUP / name, *CGROUP_ROOT.glob(f"*/{CGROUP_GROUP}/{name}")):
        while True:
            try:
                path.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                if time.monotonic() > deadline:
                    break  # still in use: a later removal of the same instance tries again
                time.sleep(0.05)
