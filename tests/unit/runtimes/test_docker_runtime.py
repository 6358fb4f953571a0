"""The docker runtime's decisions that need no engine: who a container runs as, its network's name, how an
exit under the memory limit is told, and the confinement options of a launch."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from core.sources import ImageSource
from core.tenancy import Resources
from runtimes.base import LaunchSpec
from runtimes.docker import DockerExecutor, PackageBuildFailed, image_uid, network_name, oom_detail
from runtimes.package_images import LABEL_PACKAGE_BUILD, PackageImageConfig

MIB = 1024 * 1024


@pytest.mark.parametrize(("user", "root"), [(None, True), ("", True), ("root", True), ("0", True), ("0:0", True),
                                            ("root:staff", True), ("app", False), ("1000", False),
                                            ("1000:1000", False), ("nobody:nogroup", False)])  # fmt: skip
def test_image_users(user: str | None, root: bool) -> None:
    found = image_uid(user, "app:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n")
    assert (found is None or found[0] == 0) is root


PASSWD = "root:x:0:0::/root:/bin/sh\ntoor:x:0:0::/root:/bin/sh\napp:x:1000:1001::/app:/bin/sh\n"


@pytest.mark.parametrize(
    ("user", "uid"),
    [("00", (0, 0)), ("+0", None), ("0000:1000", (0, 1000)), ("toor", (0, 0)), ("app", (1000, 1001)),
     ("app:5", (1000, 5)), ("1000", (1000, 1001)), ("ghost", None), ("root", (0, 0)), (" 0 ", (0, 0))],
)  # fmt: skip
def test_the_image_user_is_resolved_to_a_uid_however_it_is_written(user: str, uid: tuple[int, int] | None) -> None:
    assert image_uid(user, PASSWD) == uid


def test_network_is_named_by_server_id() -> None:
    server_id = uuid.uuid4()
    assert network_name(str(server_id)) == f"mcphost-srv-{server_id.hex}"
    with pytest.raises(ValueError):
        network_name("not-a-server-id")


def _attrs(code: int, oom: bool, memory: int = 64 * MIB) -> dict[str, object]:
    return {"State": {"ExitCode": code, "OOMKilled": oom}, "HostConfig": {"Memory": memory}}


def test_out_of_memory_is_told_with_the_limit() -> None:
    assert oom_detail(_attrs(137, True)) == "out of memory (limit 64 MiB)"
    assert oom_detail(_attrs(137, True, 0)) == "out of memory"
    # Without the engine's word, a SIGKILL under a limit is told as likely, and only when asked to guess.
    assert oom_detail(_attrs(137, False)) is None
    assert oom_detail(_attrs(137, False), guess=True) == "killed (SIGKILL), likely out of memory (limit 64 MiB)"
    assert oom_detail(_attrs(137, False, 0), guess=True) is None
    assert oom_detail(_attrs(1, False), guess=True) is None
    assert oom_detail(_attrs(0, False), guess=True) is None


async def test_launch_options_confine_and_pass_gpus() -> None:
    spec = LaunchSpec(
        server_id=str(uuid.uuid4()),
        deployment_id=str(uuid.uuid4()),
        slug="s",
        source=ImageSource(image="example.com/x:1"),
        resources=Resources(cpu=1.5, memory_mib=300, pids=64, gpu=True),
    )
    options, env = await DockerExecutor()._run_options(spec, "example.com/x:1")
    assert options["cap_drop"] == ["ALL"] and options["security_opt"] == ["no-new-privileges"]
    assert options["nano_cpus"] == 1_500_000_000 and options["pids_limit"] == 64
    assert options["mem_limit"] == options["memswap_limit"] == "300m"
    [request] = options["device_requests"]
    assert request["Count"] == -1 and request["Capabilities"] == [["gpu"]]
    assert "/tmp" in options["tmpfs"] and "user" not in options and "mounts" not in options and env == {}

    plain = LaunchSpec(**{**spec.__dict__, "resources": Resources(cpu=1, memory_mib=64)})
    options, _ = await DockerExecutor()._run_options(plain, "example.com/x:1")
    assert "device_requests" not in options


def test_a_missing_network_is_told_apart_from_a_missing_image() -> None:
    from runtimes.docker import _is_missing_network

    podman = "container create: unable to find network with name or ID mcphost-srv-1: network not found"
    assert _is_missing_network(podman)
    assert _is_missing_network("network mcphost-srv-1 not found")
    assert not _is_missing_network("No such image: localhost/x:1")


@pytest.mark.parametrize(
    ("required", "from_index", "problem", "isolated"),
    [(True, True, None, True), (False, True, None, False), (True, False, None, False), (True, True, "no podman", None)],
)
async def test_package_source_builds_run_on_the_isolated_build_network(
    required: bool, from_index: bool, problem: str | None, isolated: bool | None, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A source build runs the package's own setup code: its RUN steps get the build network git builds get
    (BUILD_NETWORK_ISOLATION), and where the engine cannot give one the build is refused, never run on the
    engine's network; `off` is the unsafe control. Installing fetched wheels runs no package code: no network."""
    from builds import images

    seen: dict[str, Any] = {}

    class Recorder:
        def __init__(self, docker_host: str | None = None) -> None:
            seen["host"] = docker_host

        async def isolation_problem(self) -> str | None:
            return problem

        async def build(self, context: Path, dockerfile: str, **options: Any) -> str:
            seen.update(options, context=context, dockerfile=dockerfile)
            return "sha256:built"

    monkeypatch.setattr(images, "ImageBuilder", Recorder)
    executor = DockerExecutor("unix:///nowhere.sock", packages=PackageImageConfig(isolated=required))
    if isolated is None:
        with pytest.raises(PackageBuildFailed, match="BUILD_NETWORK_ISOLATION=off"):
            await executor._build(tmp_path, "localhost/mcphost/pkg-x:1", "key", from_index)
        assert "isolated" not in seen
        return
    assert await executor._build(tmp_path, "localhost/mcphost/pkg-x:1", "key", from_index) == "sha256:built"
    assert seen["isolated"] is isolated and seen["offline"] is (not from_index)
    assert seen["host"] == "unix:///nowhere.sock"
    assert seen["dockerfile"] == "Dockerfile" and seen["labels"] == {LABEL_PACKAGE_BUILD: "key"}


def test_the_platform_turns_package_build_isolation_on_with_git_builds(tmp_path: Path) -> None:
    from core.settings import Settings
    from runtimes import build_executors

    for mode, isolated in (("required", True), ("off", False)):
        values: dict[str, Any] = {
            "_env_file": None,
            "jwt_secret": "j" * 40,
            "secrets_key": "s" * 40,
            "state_dir": tmp_path,
            "docker_host": "unix:///nowhere.sock",
            "build_network_isolation": mode,
        }
        settings = Settings(**values)
        executor = build_executors(settings)["docker"]
        assert isinstance(executor, DockerExecutor) and executor.packages.isolated is isolated
