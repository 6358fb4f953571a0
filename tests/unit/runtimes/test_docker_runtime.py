"""The docker runtime's decisions that need no engine: who a container runs as, its network's name, how an
exit under the memory limit is told, and the confinement options of a launch."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from builds.images import ImageBuilder
from builds.package_images import PackageBuildFailed, PackageImageBuilder, PackageImageConfig, package_image_config
from core.failures import PermanentFailure
from core.package_image import LABEL_PACKAGE_BUILD
from core.settings import Settings
from core.sources import ImageSource, PackageSource
from core.tenancy import Resources
from runtimes import build_executors
from runtimes.base import BRIDGE_SOURCE, LaunchSpec
from runtimes.docker import DockerExecutor
from runtimes.docker_spec import image_uid, network_name, oom_detail

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
    from runtimes.docker_spec import is_missing_network

    podman = "container create: unable to find network with name or ID mcphost-srv-1: network not found"
    assert is_missing_network(podman)
    assert is_missing_network("network mcphost-srv-1 not found")
    assert not is_missing_network("No such image: localhost/x:1")


@pytest.mark.parametrize(
    ("required", "from_index", "problem", "isolated"),
    [(True, True, None, True), (False, True, None, False), (True, False, None, False), (True, True, "no podman", None)],
)
async def test_package_source_builds_run_on_the_isolated_build_network(
    required: bool, from_index: bool, problem: str | None, isolated: bool | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A source build runs the package's own setup code: its RUN steps get the build network git builds get
    (BUILD_NETWORK_ISOLATION), and where the engine cannot give one the build is refused, never run on the
    engine's network; `off` is the unsafe control. Installing fetched wheels runs no package code: no network.
    The docker runtime builds a missing package image through the builder it was given, as the worker gives it."""
    from builds import package_images

    seen: dict[str, Any] = {}

    class Recorder:
        """The engine's builder (builds.images.ImageBuilder), as far as package images use it."""

        async def isolation_problem(self) -> str | None:
            return problem

        async def build(self, context: Path, dockerfile: str, **options: Any) -> str:
            seen.update(
                options, context=context, dockerfile=dockerfile, files=sorted(p.name for p in context.iterdir())
            )
            return "sha256:built"

    async def prepared(context: Path, source: PackageSource, config: PackageImageConfig) -> bool:
        (context / "Dockerfile").write_text("FROM scratch\n")
        return from_index

    async def absent(tag: str, key: str) -> None:
        return None

    monkeypatch.setattr(package_images, "prepare_context", prepared)
    engine: Any = Recorder()
    builder = PackageImageBuilder(PackageImageConfig(bridge=BRIDGE_SOURCE, isolated=required), engine)
    executor = DockerExecutor("unix:///nowhere.sock", package_images=builder)
    monkeypatch.setattr(executor, "_find_package_image", absent)
    source = PackageSource(package="mcp-server-time")
    key, tag = builder.name(source)
    if isolated is None:
        with pytest.raises(PackageBuildFailed, match="BUILD_NETWORK_ISOLATION=off"):
            await executor._package_image(source)
        assert "isolated" not in seen
        return
    assert await executor._package_image(source) == (tag, "sha256:built", True)
    assert seen["isolated"] is isolated and seen["offline"] is (not from_index)
    # Built from the context prepare_context filled, which is gone once the build is.
    assert seen["tag"] == tag and seen["files"] == ["Dockerfile"] and not seen["context"].exists()
    assert seen["dockerfile"] == "Dockerfile" and seen["labels"] == {LABEL_PACKAGE_BUILD: key}


def _settings(tmp_path: Path, **values: Any) -> Settings:
    defaults: dict[str, Any] = {
        "_env_file": None,
        "jwt_secret": "j" * 40,
        "secrets_key": "s" * 40,
        "state_dir": tmp_path,
        "docker_host": "unix:///nowhere.sock",
    }
    return Settings(**(defaults | values))


def test_the_platform_turns_package_build_isolation_on_with_git_builds(tmp_path: Path) -> None:
    for mode, isolated in (("required", True), ("off", False)):
        settings = _settings(tmp_path, build_network_isolation=mode)
        assert package_image_config(settings, BRIDGE_SOURCE).isolated is isolated


async def test_only_a_docker_runtime_given_a_builder_builds_package_images(tmp_path: Path) -> None:
    """The worker gives the docker runtime the builder of package images; the API, which only reads, none."""
    settings = _settings(tmp_path)
    builder = PackageImageBuilder(package_image_config(settings, BRIDGE_SOURCE), ImageBuilder(settings.docker_host))
    worker = build_executors(settings, package_images=builder)["docker"]
    assert isinstance(worker, DockerExecutor) and worker.package_images is builder
    api = build_executors(settings)["docker"]
    assert isinstance(api, DockerExecutor) and api.package_images is None
    with pytest.raises(PermanentFailure, match="builds no package images"):
        await api._package_image(PackageSource(package="mcp-server-time"))
