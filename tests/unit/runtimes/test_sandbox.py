"""The sandbox's command line and the process runtime's refusal rules: pure logic, no sandbox started."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.failures import PermanentFailure
from core.sources import PackageSource
from runtimes import sandbox, sandbox_plan
from runtimes.base import LaunchSpec
from runtimes.process import ProcessExecutor


def _plan(**overrides: object) -> sandbox_plan.SandboxPlan:
    values: dict[str, object] = {
        "uid": 201234,
        "argv": ["mcp-server-time"],
        "cgroup": "d1",
        "hidden": ["/srv/mcphost", "/srv/mcphost/process"],
        "ro_binds": [["/srv/mcphost/process/envs/pypi/x-1", "/srv/mcphost/process/envs/pypi/x-1"]],
        "rw_binds": [["/srv/mcphost/data/s1", "/data"]],
    }
    values.update(overrides)
    return sandbox_plan.SandboxPlan(**values)  # type: ignore[arg-type]


def _pairs(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, arg in enumerate(argv) if arg == flag]


def test_the_command_runs_as_the_servers_uid_without_privileges(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = sandbox_plan.bwrap_argv(_plan(), 3, 4, 5)
    # Named by its path: the barrier shell (root) resolves nothing through a PATH.
    tail = argv[argv.index("/usr/bin/setpriv") :]
    assert tail[:7] == [
        "/usr/bin/setpriv",
        "--reuid=201234",
        "--regid=201234",
        "--clear-groups",
        "--no-new-privs",
        "--inh-caps=-all",
        "--bounding-set=-all",
    ]
    assert tail[-1] == "mcp-server-time"
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-net", "--die-with-parent", "--new-session"):
        assert flag in argv
    # No user namespace: the uid is a real, unprivileged host uid, not root mapped to another number.
    assert "--unshare-user" not in argv and "--uid" not in argv


def test_the_servers_env_is_applied_only_after_the_uid_drop() -> None:
    argv = sandbox_plan.bwrap_argv(_plan(), 3, 4, 5, env_fd=6)
    tail = argv[argv.index("/usr/bin/setpriv") :]
    after = tail[tail.index("--") + 1 :]
    # setpriv execs the isolated interpreter that reads descriptor 6 and becomes the server.
    assert after[1:4] == ["-I", "-S", "-c"] and after[4] == sandbox_plan.APPLY_ENV
    assert after[5:] == ["6", "mcp-server-time"]


def test_the_env_descriptor_round_trips_and_refuses_what_is_not_an_env() -> None:
    fd = sandbox_plan.env_descriptor({"A": "1", "LD_PRELOAD": "/data/x.so"})
    assert sandbox_plan.read_env_descriptor(fd) == {"A": "1", "LD_PRELOAD": "/data/x.so"}
    r, w = os.pipe()
    os.write(w, b'["A=1"]')
    os.close(w)
    with pytest.raises(ValueError):
        sandbox_plan.read_env_descriptor(r)


def test_what_the_sandbox_shows_does_not_follow_a_servers_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    executor = ProcessExecutor(state)
    source = PackageSource(type="package", package="mcp-server-time")
    spec = LaunchSpec(
        server_id="s", deployment_id="d", slug="s", source=source, uid=201234, env={"SSL_CERT_DIR": str(state)}
    )
    plan = executor._plan(spec, ["/usr/bin/true"])
    assert all(not host.startswith(str(state)) for host, _ in plan.ro_binds), plan.ro_binds


def test_the_sandbox_shows_what_it_lists_and_nothing_else_of_the_host() -> None:
    argv = sandbox_plan.bwrap_argv(_plan(), 3, 4, 5, seccomp_fd=7)
    assert argv[argv.index("--tmpfs") + 1] == "/"  # a root of its own
    shown = {os.path.normpath(p).split("/")[1] for p in _pairs(argv, "--ro-bind") + _pairs(argv, "--symlink")}
    # The package environment's way down is made (srv), the rest are system folders.
    assert shown <= {*sandbox_plan.SYSTEM_DIRS, "etc", "srv"}, shown
    for absent in ("/sys", "/run", "/var", "/home", "/root", "/opt", "/work", "/srv/mcphost/process"):
        assert absent not in _pairs(argv, "--ro-bind") and absent not in _pairs(argv, "--bind")
    assert all(p.startswith("/etc/") for p in _pairs(argv, "--ro-bind") if p.startswith("/etc"))
    assert "/etc/shadow" not in _pairs(argv, "--ro-bind")
    for private in ("/tmp", "/var/tmp", "/dev/shm"):
        assert private in _pairs(argv, "--tmpfs")
    assert _pairs(argv, "--bind") == ["/srv/mcphost/data/s1"]
    assert argv[argv.index("--bind") + 2] == "/data"
    assert _pairs(argv, "--ro-bind").count("/srv/mcphost/process/envs/pypi/x-1") == 1
    # The way down to the bound environment is made traversable, and comes before the bind itself.
    dirs = _pairs(argv, "--dir")
    assert "/srv/mcphost/process/envs/pypi" in dirs
    assert argv.index("/srv/mcphost/process/envs/pypi") < argv.index("/srv/mcphost/process/envs/pypi/x-1")
    # The seccomp filter is installed by bwrap, before the command.
    assert argv[argv.index("--seccomp") + 1] == "7" and argv.index("--seccomp") < argv.index("--info-fd")


def test_a_folder_that_holds_the_state_directory_is_never_exposed(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    env = {"SSL_CERT_DIR": str(tmp_path), "PIP_FIND_LINKS": str(tmp_path / "state")}
    assert not {str(tmp_path), str(state)} & set(sandbox_plan.exposed_paths(env, (str(state),)))


def test_network_is_cut_unless_the_plan_wants_slirp() -> None:
    assert "--unshare-net" in sandbox_plan.bwrap_argv(_plan(network=True), 3, 4, 5)
    # Without a network namespace the sandbox would share the host's loopback: the platform never asks for it.
    assert "--unshare-net" not in sandbox_plan.bwrap_argv(_plan(network=False), 3, 4, 5)


def test_probe_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox.shutil, "which", lambda tool: None if tool == "slirp4netns" else f"/usr/bin/{tool}")
    monkeypatch.setattr(sandbox.os, "geteuid", lambda: 1000)
    support = sandbox.probe()
    assert not support.ok
    text = support.describe()
    assert "slirp4netns (apt-get install slirp4netns)" in text and "root" in text and "bwrap" not in text


def _spec(trusted: bool) -> LaunchSpec:
    source = PackageSource(package="mcp-server-time")
    return LaunchSpec(server_id="s", deployment_id="d", slug="x", source=source, uid=201234, trusted=trusted)


def test_without_a_sandbox_only_administrators_servers_run(tmp_path: Path) -> None:
    executor = ProcessExecutor(tmp_path, sandbox_mode="required")
    executor.support = sandbox.SandboxSupport(missing=("bwrap (apt-get install bubblewrap)",), limits="rlimit")
    with pytest.raises(PermanentFailure) as refused:
        executor._require_sandbox(_spec(trusted=False))
    assert "bwrap (apt-get install bubblewrap)" in refused.value.message
    assert "non-administrators" in refused.value.message
    assert executor._require_sandbox(_spec(trusted=True)) is False
    # PROCESS_SANDBOX=off: a single-user install, nothing is sandboxed and nothing refused.
    assert ProcessExecutor(tmp_path, sandbox_mode="off")._require_sandbox(_spec(trusted=False)) is False


def test_interpreters_and_paths_are_not_entry_points() -> None:
    from pydantic import ValidationError

    for command in ("python", "python3.11", "node", "bash", "sh", "env", "npx", "perl"):
        with pytest.raises(ValidationError, match="entry point"):
            PackageSource(package="mcp-server-time", command=command)
    with pytest.raises(ValidationError, match="entry point"):
        PackageSource(package="mcp-server-time", command="/usr/bin/python3")
    assert PackageSource(package="mcp-server-time", command="mcp-server-time").command == "mcp-server-time"
