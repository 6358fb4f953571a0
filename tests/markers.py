"""Which part of the platform each test file covers, and what each test needs: applied as markers, so a
part of the suite runs alone (`make test-gateway`, `pytest -m "runtimes and not vm"`)."""

from __future__ import annotations

from pathlib import Path

# The rooms of the house. A unit or integration test sits in its room's directory,
# tests/<kind>/<room>/test_*.py, and takes its room from there.
ROOMS: tuple[str, ...] = ("api", "gateway", "builds", "runtimes", "governance", "workflows")
# The kinds of test, by the directory under tests/ (anything else counts as integration).
KINDS: tuple[str, ...] = ("unit", "integration", "security")
# Security tests are kept by input channel (tests/security/test_*.py, flat), so their room is named here.
SECURITY_ROOMS: dict[str, str] = {
    "test_accounts": "api",
    "test_build_network": "builds",
    "test_config_env": "runtimes",
    "test_gvisor": "runtimes",
    "test_image_references": "runtimes",
    "test_image_references_namespace": "runtimes",
    "test_mcp_framing": "gateway",
    "test_process_sandbox": "runtimes",
    "test_pull_credentials": "runtimes",
    "test_server_answers": "gateway",
}
TESTS = Path(__file__).resolve().parent

# What a test needs, from the fixtures it uses (directly or through other fixtures).
NEEDS: dict[str, tuple[str, ...]] = {
    "docker": ("docker_engine",),
    "registry": ("registry",),
    "kube": ("cluster", "kube_stack"),
    "vm": ("guests", "vm_stack"),
}
# Files whose tests need more than a fixture shows.
FILE_NEEDS: dict[str, tuple[str, ...]] = {
    "test_kubernetes": ("kube",),
    "test_pull_credentials": ("kube",),
    "test_vm": ("vm",),
    "test_build_network": ("network",),
    "test_process_sandbox": ("network",),
    "test_docker_packages": ("network",),
    "test_deploy_process": ("network",),
}


def place(path: Path) -> tuple[str, str | None]:
    """The kind and room of test file `path`: tests/unit/<room>/, tests/integration/<room>/, tests/security/."""
    try:
        parts = path.resolve().relative_to(TESTS).parts
    except ValueError:
        parts = ()
    kind = parts[0] if len(parts) > 1 and parts[0] in KINDS else "integration"
    if kind == "security":
        room = SECURITY_ROOMS.get(path.stem) if len(parts) == 2 else None
    else:
        room = parts[1] if len(parts) == 3 and parts[0] == kind and parts[1] in ROOMS else None
    return kind, room


def markers_for(path: Path, fixtures: list[str]) -> list[str]:
    """The markers of a test in file `path` using `fixtures` (its whole fixture closure)."""
    kind, room = place(path)
    found = {kind}
    if kind == "security":
        found.add("integration")
    if room is not None:
        found.add(room)
    for marker, names in NEEDS.items():
        if any(name in fixtures for name in names):
            found.add(marker)
    found.update(FILE_NEEDS.get(path.stem, ()))
    return sorted(found)


# The groups of `--dist loadgroup` (tests/conftest.py::xdist_group) that take longest, longest first, with
# the seconds they took in a two-worker run (`--durations=0`, summed by group): `make test` hands them out
# first (with xdist's reordering by test count turned off), so neither worker is left running a long one
# alone at the end. Every other group follows in collection order.
HEAVY_GROUPS: tuple[str, ...] = (
    "integration/api/test_openapi_fuzz.py",  # 226
    "integration/builds/test_git_builds.py",  # 179
    "integration/api/test_cli.py",  # 90
    "integration/gateway/test_gateway.py",  # 69
    "integration/runtimes/test_hostile.py",  # 65
    "integration/governance/test_promotions.py",  # 63
    "integration/gateway/test_conformance.py",  # 62
    "integration/runtimes/test_docker_packages.py",  # 58
    "integration/workflows/test_durability.py",  # 55
    "kube",  # 49
    "integration/workflows/test_supervisor.py",  # 47
    "integration/runtimes/test_placement.py",  # 45
    "integration/governance/test_evaluations.py",  # 44
    "security/test_build_network.py",  # 36
    "integration/runtimes/test_install_kill.py",  # 35
    "integration/runtimes/test_deploy_process.py",  # 35
    "vm",  # 34
    "integration/governance/test_remediation.py",  # 33
    "integration/runtimes/test_docker_isolation.py",  # 33
    "integration/gateway/test_gateway_server.py",  # 30
)

# Tests that take more than 20 s on a 2-core machine (pytest --durations), by node id without parameters.
SLOW: frozenset[str] = frozenset(
    {
        "tests/integration/api/test_cli.py::test_eval_add_run_results_and_board",
        "tests/integration/api/test_cli.py::test_promote_create_track_schedule_follow_history_and_refusals",
        "tests/integration/api/test_openapi_fuzz.py::test_schemathesis_finds_nothing",
        "tests/integration/builds/test_git_builds.py::test_build_cache_is_used_unless_disabled",
        "tests/integration/builds/test_git_builds.py::test_python_repo_is_built_pushed_deployed_and_reused",
        "tests/integration/builds/test_git_builds.py::test_transient_registry_faults_are_retried_then_fail_cleanly",
        "tests/integration/builds/test_git_builds.py::test_worker_killed_during_build_or_push_finishes_once",
        "tests/integration/builds/test_git_webhooks.py::test_github_and_gitlab_pushes_deploy_each_commit_once_and_rollback_reuses_the_artifact",
        "tests/integration/gateway/test_conformance.py::test_the_gateway_passes_what_the_server_passes",
        "tests/integration/gateway/test_gateway.py::test_random_slugs_leave_the_route_cache_bounded",
        "tests/integration/gateway/test_gateway_server.py::test_a_slow_reader_holds_the_stream_back_instead_of_filling_memory",
        "tests/integration/governance/test_evaluations.py::test_a_worker_killed_mid_run_ends_the_run_correct_once",
        "tests/integration/runtimes/test_docker_packages.py::test_the_hostile_server_gets_nothing_in_its_container",
        "tests/integration/runtimes/test_hostile.py::test_hostile_server_gets_nothing_and_the_platform_keeps_serving",
        "tests/integration/runtimes/test_install_kill.py::test_a_killed_workers_install_is_stopped_before_the_next_attempt",
        "tests/integration/runtimes/test_placement.py::test_runtime_steps_reach_the_host_holding_the_instance",
        "tests/integration/workflows/test_supervisor.py::test_a_worker_killed_during_a_restart_leaves_exactly_one_instance",
    }
)
