"""Which part of the platform each test file covers, and what each test needs: applied as markers, so a
part of the suite runs alone (`make test-gateway`, `pytest -m "runtimes and not vm"`)."""

from __future__ import annotations

from pathlib import Path

# The rooms of the house, by test file (unit, integration and security tests alike).
ROOMS: dict[str, tuple[str, ...]] = {
    "api": (
        "test_accounts", "test_cli", "test_compose", "test_crypto", "test_files", "test_login_limits",
        "test_openapi_fuzz", "test_rollback_choice", "test_secret_files", "test_secret_names", "test_secrets",
        "test_security", "test_server_secrets", "test_servers", "test_shared_log_tail", "test_sources_and_settings",
        "test_streams", "test_uid_slots", "test_up_bindings", "test_lifecycle",
    ),
    "gateway": (
        "test_accesslog", "test_conformance", "test_gateway", "test_gateway_deploy", "test_gateway_framing",
        "test_gateway_logic", "test_gateway_process", "test_gateway_server", "test_mcp_framing", "test_ratelimit",
        "test_route_invalidation", "test_route_table", "test_server_answers",
    ),
    "builds": (
        "test_build_network", "test_git_and_recipes", "test_git_builds", "test_git_webhooks", "test_package_images",
        "test_registry_client", "test_registry_index",
    ),
    "runtimes": (
        "test_attestation", "test_bridge_limits", "test_config_env", "test_deploy_docker", "test_deploy_process",
        "test_docker_isolation", "test_docker_packages", "test_docker_runtime", "test_gvisor", "test_hostile",
        "test_image_references", "test_image_references_namespace", "test_install_kill", "test_kubernetes",
        "test_placement", "test_process_env", "test_process_sandbox", "test_pull_credentials", "test_sandbox",
        "test_tenancy", "test_vm", "test_vm_placement",
    ),
    "governance": (
        "test_evaluation_scoring", "test_evaluations", "test_governance", "test_governance_timers", "test_policy",
        "test_policy_gate", "test_promotion_rules", "test_promotion_timers", "test_promotions", "test_remediation",
        "test_remediation_http_guard", "test_remediation_rules",
    ),
    "workflows": (
        "test_cancel_cleanup", "test_contracts", "test_durability", "test_health_heartbeat", "test_markers",
        "test_prune_history", "test_prune_schedule", "test_reconcile", "test_replay", "test_revision_races",
        "test_supervisor",
    ),
}  # fmt: skip
ROOM_OF = {name: room for room, names in ROOMS.items() for name in names}

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


def markers_for(path: Path, fixtures: list[str]) -> list[str]:
    """The markers of a test in file `path` using `fixtures` (its whole fixture closure)."""
    kind = path.parent.name  # unit | integration | security
    found = {kind if kind in ("unit", "integration", "security") else "integration"}
    if kind == "security":
        found.add("integration")
    room = ROOM_OF.get(path.stem)
    if room is not None:
        found.add(room)
    for marker, names in NEEDS.items():
        if any(name in fixtures for name in names):
            found.add(marker)
    found.update(FILE_NEEDS.get(path.stem, ()))
    return sorted(found)


# Tests that take more than 20 s on a 2-core machine (pytest --durations), by node id without parameters.
SLOW: frozenset[str] = frozenset()
