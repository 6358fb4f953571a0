"""The kubernetes runtime's objects, built without a cluster: the names and labels that tie them to a
server and revision, the revision's Deployment (one replica, confined pod, readiness gate), the server's
PersistentVolumeClaim, the revision's env Secret and Service; and what a pod's status says (stuck, exit
code). The kubernetes client is imported only when an object is built.
"""

from __future__ import annotations

from typing import Any

from runtimes.base import LaunchSpec

MANAGED_BY = "app.kubernetes.io/managed-by"
K_SERVER = "mcphost.io/server"
K_DEPLOYMENT = "mcphost.io/deployment"
K_SLUG = "mcphost.io/slug"
A_PORT = "mcphost.io/port"
A_PATH = "mcphost.io/path"
READY_GATE = "mcphost.io/mcp-ready"
CONTAINER = "server"
# Waiting reasons after which a pod will not start without a change (a new image, new credentials).
STUCK = {"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError"}


def object_name(deployment_id: str) -> str:
    return f"mcp-{deployment_id}"


def claim_name(server_id: str) -> str:
    return f"mcp-data-{server_id}"


def object_labels(spec: LaunchSpec) -> dict[str, str]:
    return {
        MANAGED_BY: "mcphost",
        K_SERVER: spec.server_id,
        K_DEPLOYMENT: spec.deployment_id,
        K_SLUG: spec.slug[:63].strip("-_.") or "server",
    }


def deployment_object(
    spec: LaunchSpec, image: str, port: int, path: str, *, service_account: str, pull_secrets: list[Any] | None
) -> Any:
    """The revision's Deployment: one replica of a pod confined as the module docstring of `runtimes.kubernetes`
    says, pulling with `pull_secrets`."""
    from kubernetes import client

    name = object_name(spec.deployment_id)
    labels = object_labels(spec)
    limits: dict[str, str] = {}
    if spec.resources is not None:
        limits = {"cpu": f"{int(spec.resources.cpu * 1000)}m", "memory": f"{spec.resources.memory_mib}Mi"}
    uid = spec.uid if spec.uid is not None else 65534
    container = client.V1Container(
        name=CONTAINER,
        image=image,
        env=[client.V1EnvVar(name="PORT", value=str(port))],
        env_from=[client.V1EnvFromSource(secret_ref=client.V1SecretEnvSource(name=name))],
        ports=[client.V1ContainerPort(container_port=port, name="mcp")],
        resources=client.V1ResourceRequirements(limits=limits or None, requests=limits or None),
        readiness_probe=client.V1Probe(
            tcp_socket=client.V1TCPSocketAction(port=port), period_seconds=2, failure_threshold=3
        ),
        security_context=client.V1SecurityContext(
            allow_privilege_escalation=False,
            privileged=False,
            capabilities=client.V1Capabilities(drop=["ALL"]),
            run_as_user=uid,
            run_as_group=uid,
            run_as_non_root=True,
            seccomp_profile=client.V1SeccompProfile(type="RuntimeDefault"),
        ),
        volume_mounts=[
            client.V1VolumeMount(name="data", mount_path="/data"),
            client.V1VolumeMount(name="tmp", mount_path="/tmp"),
        ],
    )
    pod = client.V1PodSpec(
        containers=[container],
        service_account_name=service_account,
        automount_service_account_token=False,
        enable_service_links=False,
        security_context=client.V1PodSecurityContext(fs_group=uid),
        readiness_gates=[client.V1PodReadinessGate(condition_type=READY_GATE)],
        image_pull_secrets=pull_secrets,
        volumes=[
            client.V1Volume(
                name="data",
                persistent_volume_claim=client.V1PersistentVolumeClaimVolumeSource(
                    claim_name=claim_name(spec.server_id)
                ),
            ),
            client.V1Volume(name="tmp", empty_dir=client.V1EmptyDirVolumeSource(medium="Memory")),
        ],
    )
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels, annotations={A_PORT: str(port), A_PATH: path}),
        spec=client.V1DeploymentSpec(
            replicas=1,
            selector=client.V1LabelSelector(match_labels={K_DEPLOYMENT: spec.deployment_id}),
            strategy=client.V1DeploymentStrategy(type="Recreate"),
            template=client.V1PodTemplateSpec(metadata=client.V1ObjectMeta(labels=labels), spec=pod),
        ),
    )


def claim_object(spec: LaunchSpec, data_size: str, storage_class: str | None) -> Any:
    """The server's claim (its /data), shared by its revisions."""
    from kubernetes import client

    return client.V1PersistentVolumeClaim(
        metadata=client.V1ObjectMeta(
            name=claim_name(spec.server_id), labels={MANAGED_BY: "mcphost", K_SERVER: spec.server_id}
        ),
        spec=client.V1PersistentVolumeClaimSpec(
            access_modes=["ReadWriteOnce"],
            resources=client.V1VolumeResourceRequirements(requests={"storage": data_size}),
            storage_class_name=storage_class,
        ),
    )


def env_secret(spec: LaunchSpec) -> Any:
    """The revision's environment, as the Secret its pod takes it from."""
    from kubernetes import client

    return client.V1Secret(
        metadata=client.V1ObjectMeta(name=object_name(spec.deployment_id), labels=object_labels(spec)),
        type="Opaque",
        string_data=dict(spec.env),
    )


def service_object(spec: LaunchSpec, port: int) -> Any:
    """The revision's Service."""
    from kubernetes import client

    return client.V1Service(
        metadata=client.V1ObjectMeta(name=object_name(spec.deployment_id), labels=object_labels(spec)),
        spec=client.V1ServiceSpec(
            selector={K_DEPLOYMENT: spec.deployment_id},
            ports=[client.V1ServicePort(name="mcp", port=port, target_port=port)],
            # The platform's health check must reach the pod before the readiness gate is set.
            publish_not_ready_addresses=True,
        ),
    )


def pod_stuck(pod: Any) -> str | None:
    """Why the pod will not start without a change (see STUCK), or None."""
    for status in (pod.status.container_statuses if pod.status else None) or []:
        waiting = status.state.waiting if status.state else None
        if waiting is not None and waiting.reason in STUCK:
            return f"{waiting.reason}: {waiting.message or ''}".strip(": ")
    return None


def pod_exit_code(pod: Any) -> int | None:
    for status in (pod.status.container_statuses if pod.status else None) or []:
        terminated = status.state.terminated if status.state else None
        if terminated is not None:
            return int(terminated.exit_code)
    return None
