"""Platform pull credentials, the channel: on kubernetes the platform's registry Secret
(K8S_REGISTRY_SECRET_NAME) opens every repository the platform's credentials reach. Named by every pod, it
would let a tenant's image source pull through it (and the platform's builds of other servers); named only by
pods of the platform's pushed build of that very server, it pulls nothing a source names. Checked on a real
kube-apiserver, in the objects the runtime writes and in the pods the controllers make of them. Control:
with the decision forced open, a tenant's image pod carries the Secret."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.failures import PermanentFailure
from core.sources import ImageSource
from core.tenancy import image_repository
from runtimes.base import Instance, LaunchSpec
from runtimes.kubernetes import KubernetesExecutor
from runtimes.kubernetes_spec import K_DEPLOYMENT, object_name
from tests.support.components import require
from tests.support.kube import Cluster, ensure_binaries

pytestmark = pytest.mark.timeout(300)
NAMESPACE = "mcphost-pull"
PULL_SECRET = "mcphost-registry"
REGISTRY = "registry.example:5000/mcp"
DIGEST = "sha256:" + "cd" * 32


@pytest.fixture(scope="module")
def cluster(workdir: Path) -> Iterator[Cluster]:
    """The control plane only: the controllers make pods of each Deployment; nothing needs to run them."""
    require(ensure_binaries(), "kube-apiserver 1.20.2 and etcd (tests/support/k8s/build.sh, as root on Debian)")
    control = Cluster(workdir / "kube-pull").start()
    try:
        control.wait_namespace_ready(NAMESPACE)
        yield control
    finally:
        control.stop()


def _executor(control: Cluster) -> KubernetesExecutor:
    return KubernetesExecutor(
        namespace=NAMESPACE,
        kubeconfig=control.kubeconfig,
        registry_secret=PULL_SECRET,
        registry=REGISTRY,
        access="service",
    )


def _spec(server_id: str, image: str, builder: str | None = None) -> LaunchSpec:
    return LaunchSpec(
        server_id=server_id,
        deployment_id=str(uuid.uuid4()),
        slug="pull",
        source=ImageSource(image=image),
        image_builder=builder,
    )


def _build_of(server_id: str) -> str:
    return f"{REGISTRY}/{image_repository(server_id)}@{DIGEST}"


def _pull_secrets(control: Cluster, deployment_id: str) -> tuple[list[str], list[str]]:
    """The pull Secrets the revision's Deployment names, and those its pod (made by the controllers) names."""
    from kubernetes import client

    api = control.client()
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    made: Any = apps.read_namespaced_deployment(object_name(deployment_id), NAMESPACE)
    template = [s.name for s in made.spec.template.spec.image_pull_secrets or []]
    deadline = time.monotonic() + 60
    while True:
        pods: list[Any] = core.list_namespaced_pod(NAMESPACE, label_selector=f"{K_DEPLOYMENT}={deployment_id}").items
        if pods:
            return template, [s.name for s in pods[0].spec.image_pull_secrets or []]
        assert time.monotonic() < deadline, "the controllers made no pod of the Deployment"
        time.sleep(0.2)


async def _launch(executor: KubernetesExecutor, spec: LaunchSpec, cleanup: list[Instance]) -> None:
    cleanup.append(await executor.launch(spec))


async def test_only_the_servers_own_pushed_build_names_the_pull_secret(cluster: Cluster) -> None:
    executor = _executor(cluster)
    server, other = str(uuid.uuid4()), str(uuid.uuid4())
    launched: list[Instance] = []
    try:
        tenant_image = _spec(server, "ghcr.io/acme/weather-mcp:1.2")
        own_build = _spec(server, _build_of(server))
        promoted = _spec(other, _build_of(server), builder=server)
        for spec in (tenant_image, own_build, promoted):
            await _launch(executor, spec, launched)

        assert _pull_secrets(cluster, tenant_image.deployment_id) == ([], [])
        assert _pull_secrets(cluster, own_build.deployment_id) == ([PULL_SECRET], [PULL_SECRET])
        assert _pull_secrets(cluster, promoted.deployment_id) == ([PULL_SECRET], [PULL_SECRET])

        # Another server naming that build itself is refused before anything is made in the cluster.
        foreign = _spec(other, _build_of(server))
        with pytest.raises(PermanentFailure) as refused:
            await executor.launch(foreign)
        assert "platform's own image namespace" in refused.value.message
        assert await executor.instances(other) == [i for i in launched if i.server_id == other]
    finally:
        for instance in launched:
            await executor.remove(instance)
        await executor.close()


async def test_control_with_the_decision_forced_open_a_tenants_image_carries_the_secret(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("runtimes.kubernetes.is_build_of", lambda *args, **kwargs: True)
    executor = _executor(cluster)
    launched: list[Instance] = []
    try:
        tenant_image = _spec(str(uuid.uuid4()), "ghcr.io/acme/weather-mcp:1.2")
        await _launch(executor, tenant_image, launched)
        assert _pull_secrets(cluster, tenant_image.deployment_id) == ([PULL_SECRET], [PULL_SECRET])
    finally:
        for instance in launched:
            await executor.remove(instance)
        await executor.close()
