"""How PyPI package sources become images on the docker runtime, without an engine: the image's key and
tag, its Dockerfile, which entry point a server runs and how, and the bridge's memory-limit report."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

import pytest

from builds.package_images import PackageImageConfig, bridge_requirements, dockerfile, image_key, image_tag
from core.failures import CommandNotFound, PermanentFailure
from core.package_image import BRIDGE_PYTHON, CONTAINER_PORT, ENTRY_POINTS_FILE, choose_script, container_command
from core.sources import PackageSource
from runtimes import base, bridge
from runtimes.base import BRIDGE_SOURCE, LaunchSpec
from runtimes.docker import DockerExecutor

TIME = PackageSource(package="mcp-server-time", args=["--local-timezone", "UTC"])
CONFIG = PackageImageConfig(bridge=BRIDGE_SOURCE)


def test_the_image_key_covers_what_the_image_is_made_of(tmp_path: Path) -> None:
    key = image_key(TIME, CONFIG)
    assert key == image_key(PackageSource(package="mcp-server-time", args=["other"]), CONFIG)
    assert key == image_key(PackageSource(package="mcp-server-time", command="x"), CONFIG)
    others = [
        image_key(PackageSource(package="mcp-server-time", version="1.0"), CONFIG),
        image_key(TIME, replace(CONFIG, allow_sdist=True)),
        image_key(TIME, replace(CONFIG, base_image="localhost/other:1")),
        image_key(TIME, replace(CONFIG, python_version="3.12")),
    ]
    other_bridge = tmp_path / "bridge.py"
    other_bridge.write_text(BRIDGE_SOURCE.read_text() + "\n# changed\n")
    others.append(image_key(TIME, replace(CONFIG, bridge=other_bridge)))
    assert len({key, *others}) == 6
    assert image_tag(key) == f"localhost/mcphost/pkg-{key[:16]}:1"


def test_the_dockerfile_installs_wheels_offline_in_two_environments() -> None:
    text = dockerfile("localhost/base:1", PackageSource(package="mcp-server-time", version="1.2"), from_index=False)
    assert text.startswith("FROM localhost/base:1\n")
    run = next(line for line in text.splitlines() if line.startswith("RUN "))
    steps = run.removeprefix("RUN ").split(" && ")
    bridge_pins = " ".join(bridge_requirements())
    assert steps[0] == "python3 -m venv /opt/mcphost/venv"
    assert steps[1].endswith(f"--no-index --find-links /wheels/bridge {bridge_pins}")
    assert steps[2] == "python3 -m venv /opt/venv"
    assert steps[3].startswith("/opt/venv/bin/pip install") and steps[3].endswith(
        "--no-index --find-links /wheels/package mcp-server-time==1.2"
    )
    assert steps[4] == f"{BRIDGE_PYTHON} -I /wheels/entry_points.py /opt/venv mcp-server-time {ENTRY_POINTS_FILE}"
    assert steps[5] == "rm -rf /wheels"
    assert "COPY bridge.py /opt/mcphost/bridge.py" in text
    # The bridge pins the versions the platform's own bridge runs with.
    assert all("==" in pin for pin in bridge_requirements())

    # With PACKAGE_ALLOW_SDIST and no wheels, the package alone comes from the index, in the build.
    sdist = dockerfile("localhost/base:1", TIME, from_index=True)
    package_step = next(s for s in sdist.split(" && ") if s.startswith("/opt/venv/bin/pip install"))
    assert "--no-index" not in package_step
    assert "--no-index --find-links /wheels/bridge" in sdist


def test_a_server_runs_only_an_entry_point_its_package_declares() -> None:
    assert choose_script(TIME, ["mcp-server-time"]) == "mcp-server-time"
    assert choose_script(PackageSource(package="Mcp_Server.Time"), ["x", "mcp-server-time"]) == "mcp-server-time"
    assert choose_script(PackageSource(package="weather"), ["weather-mcp"]) == "weather-mcp"
    assert choose_script(PackageSource(package="p", command="b"), ["a", "b"]) == "b"
    with pytest.raises(CommandNotFound, match=r"has 2 console scripts \(a, b\)"):
        choose_script(PackageSource(package="p"), ["a", "b"])
    with pytest.raises(CommandNotFound) as caught:
        choose_script(PackageSource(package="mcp-server-time", command="not-a-script"), ["mcp-server-time"])
    assert caught.value.message == (
        "package 'mcp-server-time' declares no console script 'not-a-script'; its entry points: mcp-server-time "
        "(set source.command to one of them)"
    )
    with pytest.raises(CommandNotFound, match="its entry points: none"):
        choose_script(PackageSource(package="p", command="p"), [])


def test_stdio_servers_run_behind_the_bridge_and_http_ones_directly() -> None:
    command, env = container_command(TIME, "mcp-server-time")
    assert command == [
        BRIDGE_PYTHON, "/opt/mcphost/bridge.py", "--host", "0.0.0.0", "--port", str(CONTAINER_PORT),
        "--path", "/mcp", "--report-oom", "--", "/opt/venv/bin/mcp-server-time", "--local-timezone", "UTC",
    ]  # fmt: skip
    assert env == {}
    http = PackageSource(package="web-mcp", transport="http", path="/rpc", args=["--x"])
    assert container_command(http, "web-mcp") == (["/opt/venv/bin/web-mcp", "--x"], {"HOST": "0.0.0.0"})


async def test_npm_packages_are_refused_before_the_engine_is_asked() -> None:
    spec = LaunchSpec(
        server_id=str(uuid.uuid4()),
        deployment_id=str(uuid.uuid4()),
        slug="s",
        source=PackageSource(registry="npm", package="x"),
    )
    executor = DockerExecutor("unix:///nonexistent/docker.sock")
    for step in (executor.prepare, executor.launch):
        with pytest.raises(PermanentFailure, match="npm packages run on the process runtime"):
            await step(spec)


def test_the_bridge_stands_alone() -> None:
    assert bridge.BRIDGE_PATH_ENV == base.BRIDGE_PATH_ENV
    source = Path(bridge.__file__).read_text()
    assert "from runtimes" not in source and "import runtimes" not in source
    assert "from core" not in source


def test_the_bridge_reads_oom_kills_and_the_limit_of_either_cgroup_version(tmp_path: Path) -> None:
    v2, v1 = tmp_path / "memory.events", tmp_path / "memory.oom_control"
    v2.write_text("low 0\nhigh 0\nmax 3\noom 2\noom_kill 1\noom_group_kill 0\n")
    v1.write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    missing = str(tmp_path / "missing")
    assert bridge.oom_kills(((str(v2), "oom_kill"), (str(v1), "oom_kill"))) == 1
    assert bridge.oom_kills(((missing, "oom_kill"), (str(v1), "oom_kill"))) == 4
    assert bridge.oom_kills(((missing, "oom_kill"),)) is None

    limit = tmp_path / "limit"
    limit.write_text(f"{256 * 1024 * 1024}\n")
    assert bridge.memory_limit_mib((missing, str(limit))) == 256
    limit.write_text("max\n")
    assert bridge.memory_limit_mib((str(limit),)) is None
    limit.write_text("9223372036854771712\n")  # cgroup v1 without a limit
    assert bridge.memory_limit_mib((str(limit),)) is None
