"""Where MCP servers run. `build_executors` makes the ones this process may use."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

# Kept light: the sandbox launcher (`python -m runtimes.sandbox`) imports this package on every start.
if TYPE_CHECKING:
    from core.settings import Settings
    from runtimes.base import Executor, PackageImages

# Given an image reference and the id of the server pulling it, the credentials to pull it with (docker
# SDK auth_config), or None.
AuthLookup = Callable[[str, str], "dict[str, str] | None"]


def build_executors(
    settings: Settings, auth_for: AuthLookup | None = None, package_images: PackageImages | None = None
) -> dict[str, Executor]:
    """`package_images` builds the images of package sources on the docker runtime: the worker passes the
    builds' one; the API, which only reads what runs (log tails, live status), passes none."""
    from pathlib import Path

    from core.tenancy import installer_uid
    from runtimes.process import ProcessExecutor

    # Besides the state directory, what a hosted process must never read: the platform's .env and keys.
    hidden = [Path(".env").resolve(), settings.state_dir.resolve()]
    if settings.registry_auth_dockerconfig is not None:
        hidden.append(settings.registry_auth_dockerconfig.resolve())
    executors: dict[str, Executor] = {
        "process": ProcessExecutor(
            settings.state_dir / "process",
            install_timeout=settings.package_install_timeout_seconds,
            sandbox_mode=settings.process_sandbox,
            installer_uid=installer_uid(settings.sandbox_uid_base),
            allow_sdist=settings.package_allow_sdist,
            find_links=settings.package_find_links,
            hidden=tuple(hidden),
            bridge_max_sessions=settings.bridge_max_sessions,
            bridge_idle_seconds=settings.bridge_idle_timeout_seconds,
        )
    }
    if settings.container_runtime == "docker" or settings.docker_host:
        from runtimes.docker import DockerExecutor

        executors["docker"] = DockerExecutor(
            settings.docker_host,
            auth_for=auth_for,
            package_images=package_images,
            bridge_max_sessions=settings.bridge_max_sessions,
            bridge_idle_seconds=settings.bridge_idle_timeout_seconds,
            registry=settings.registry,
            gvisor_runtime=settings.container_gvisor_runtime,
            gvisor_base_url=settings.container_gvisor_docker_host,
        )
    if settings.kubernetes_enabled:
        from runtimes.kubernetes import KubernetesExecutor

        executors["kubernetes"] = KubernetesExecutor(
            namespace=settings.k8s_namespace,
            kubeconfig=settings.k8s_kubeconfig,
            context=settings.k8s_context,
            service_account=settings.k8s_service_account,
            registry_secret=settings.k8s_registry_secret_name,
            registry=settings.registry,
            dockerconfig=settings.registry_auth_dockerconfig,
            access=settings.k8s_access,
            data_size=settings.k8s_data_size,
            storage_class=settings.k8s_storage_class,
            ready_timeout=settings.k8s_ready_timeout_seconds,
        )
    if settings.vm_enabled:
        from runtimes.vm import VirtualMachineExecutor

        executors["virtual-machine"] = VirtualMachineExecutor(
            settings.libvirt_uri,
            network=settings.vm_network,
            memory_mib=settings.vm_memory_mib,
            vcpus=settings.vm_vcpus,
            workload_root=settings.state_dir / "vm",
            base_image=settings.vm_base_image,
            template=settings.vm_domain_template,
            attestation_port=settings.vm_attestation_port,
            boot_timeout=settings.vm_boot_timeout_seconds,
        )
    return executors


async def check_cluster(executors: dict[str, Executor]) -> str | None:
    """At worker start: if the kubernetes runtime's cluster cannot be reached and docker is enabled, the
    kubernetes runtime falls back to docker (each launch records it as a policy note). Returns why, or
    None when nothing had to change."""
    from runtimes.kubernetes import KubernetesExecutor
    from runtimes.kubernetes_fallback import DockerFallback

    kube = executors.get("kubernetes")
    if not isinstance(kube, KubernetesExecutor):
        return None
    problem = await kube.ping()
    if problem is None or "docker" not in executors:
        return problem
    executors["kubernetes"] = DockerFallback(executors["docker"], kube, problem)
    return problem
