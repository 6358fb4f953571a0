"""The kubernetes runtime: each server revision is a Deployment (one replica) and a Service in
K8S_NAMESPACE, with a Secret holding its environment and the server's PersistentVolumeClaim at /data.

Objects are named by the revision (`mcp-<deployment id>`; the claim by the server, `mcp-data-<server
id>`) and labelled with the server, deployment and slug, so every method looks at the cluster first and
a retry finds what an earlier attempt made. Pods run as the server's uid with every capability dropped,
no privilege escalation, the RuntimeDefault seccomp profile, no service account token and no service
links; limits are the server's CPU and memory. The pod is Ready only once the platform's own MCP health
check has passed: a readiness gate (`mcphost.io/mcp-ready`) the health check sets, on top of the
kubelet's TCP probe.

How the gateway reaches a revision (K8S_ACCESS): `service`, the Service's cluster DNS name (the
platform runs in the cluster); or `pod`, the pod's IP (the platform runs on the cluster network but
without its DNS). The platform does not port-forward.

Registry pull credentials: a pod of the platform's build of its own server (in REGISTRY's namespace)
names the `kubernetes.io/dockerconfigjson` Secret K8S_REGISTRY_SECRET_NAME, which the runtime writes from
REGISTRY_AUTH_DOCKERCONFIG before each launch and again after every credential refresh. No other pod
names it: an image a server's source names is pulled with the cluster's own means, and an image of the
platform's namespace that is not the server's own build is refused.

The kubernetes client is synchronous: every call runs in a thread.
The objects themselves are built in `runtimes.kubernetes_spec`; the stand-in used while the cluster
cannot be reached is `runtimes.kubernetes_fallback.DockerFallback`.
"""

from __future__ import annotations

import asyncio
import base64
import time
from pathlib import Path
from typing import Any

from core.failures import ImageNotFound, PermanentFailure, RuntimeFailure
from core.tenancy import image_refusal, is_build_of
from runtimes.base import Instance, InstanceStatus, LaunchSpec
from runtimes.kubernetes_spec import (
    A_PATH,
    A_PORT,
    CONTAINER,
    K_DEPLOYMENT,
    K_SERVER,
    MANAGED_BY,
    READY_GATE,
    claim_name,
    claim_object,
    deployment_object,
    env_secret,
    object_name,
    pod_exit_code,
    pod_stuck,
    service_object,
)


class KubernetesExecutor:
    name = "kubernetes"

    def __init__(
        self,
        *,
        namespace: str,
        kubeconfig: Path | None = None,
        context: str | None = None,
        service_account: str = "default",
        registry_secret: str | None = None,
        registry: str | None = None,
        dockerconfig: Path | None = None,
        access: str = "service",
        data_size: str = "1Gi",
        storage_class: str | None = None,
        ready_timeout: float = 300.0,
    ) -> None:
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.context = context
        self.service_account = service_account
        self.registry_secret = registry_secret
        self.registry = registry
        self.dockerconfig = dockerconfig
        self.access = access
        self.data_size = data_size
        self.storage_class = storage_class
        self.ready_timeout = ready_timeout
        self._api: Any = None

    # ---- plumbing ---------------------------------------------------------------------------------

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            if self.kubeconfig is not None:
                self._api = config.new_client_from_config(config_file=str(self.kubeconfig), context=self.context)
            else:
                config.load_incluster_config()
                self._api = client.ApiClient()
        return self._api

    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self._client())

    def _apps(self) -> Any:
        from kubernetes import client

        return client.AppsV1Api(self._client())

    async def _call(self, fn: Any, *args: Any, missing_ok: bool = False, exists_ok: bool = False, **kwargs: Any) -> Any:
        from kubernetes.client.rest import ApiException
        from kubernetes.config import ConfigException
        from urllib3.exceptions import HTTPError

        kwargs.setdefault("_request_timeout", 30)
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            if exc.status == 409 and exists_ok:
                return None
            reason = _reason(exc)
            if exc.status in (400, 403, 422):
                raise PermanentFailure(f"the cluster refused: {reason}") from None
            raise RuntimeFailure(f"the cluster answered {exc.status}: {reason}") from None
        except (HTTPError, OSError, ConfigException) as exc:
            raise RuntimeFailure(f"the cluster cannot be reached: {type(exc).__name__}: {exc}"[:500]) from None

    async def ping(self) -> str | None:
        """None when the cluster answers, else why not."""
        from kubernetes import client

        try:
            await self._call(client.VersionApi(self._client()).get_code, _request_timeout=5)
        except RuntimeFailure as exc:
            return exc.message
        except Exception as exc:  # a kubeconfig that does not load, no in-cluster environment  # noqa: BLE001
            return f"{type(exc).__name__}: {exc}"[:500]
        return None

    # ---- the executor protocol -----------------------------------------------------------------------

    def _image(self, spec: LaunchSpec) -> tuple[str, int, str]:
        from core.sources import ImageSource

        if not isinstance(spec.source, ImageSource):
            raise PermanentFailure(
                "the kubernetes runtime runs image and git sources (built and pushed to REGISTRY); "
                f"a {spec.source.type} source runs on the process or docker runtime"
            )
        refusal = image_refusal(spec.source.image, self.registry, spec.server_id, spec.image_builder)
        if refusal is not None:
            raise PermanentFailure(refusal)
        return spec.source.image, spec.source.port, spec.source.path

    def _pull_secrets(self, spec: LaunchSpec, image: str) -> list[Any] | None:
        """The pull Secret, for a pod of the platform's own pushed build of this server only: the platform's
        registry credentials must not pull anything a server's source names."""
        from kubernetes import client

        if not self.registry_secret:
            return None
        if not is_build_of(image, self.registry, (spec.server_id, spec.image_builder), pushed=True):
            return None
        return [client.V1LocalObjectReference(name=self.registry_secret)]

    async def prepare(self, spec: LaunchSpec) -> str:
        image, _, _ = self._image(spec)
        if await self._call(self._core().read_namespace, self.namespace, missing_ok=True) is None:
            raise PermanentFailure(
                f"namespace {self.namespace!r} does not exist in the cluster: create it (K8S_NAMESPACE)"
            )
        await self.sync_pull_secret()
        return f"image {image} for namespace {self.namespace} (pulled by the cluster)"

    async def sync_pull_secret(self) -> bool:
        """Write the pull Secret from REGISTRY_AUTH_DOCKERCONFIG (create, or replace when it differs).
        False when there is nothing to write."""
        if not self.registry_secret or self.dockerconfig is None:
            return False
        try:
            raw = await asyncio.to_thread(self.dockerconfig.read_bytes)
        except OSError as exc:
            raise RuntimeFailure(f"cannot read REGISTRY_AUTH_DOCKERCONFIG: {exc.strerror}") from None
        from kubernetes import client

        data: dict[str, bytes | str] = {".dockerconfigjson": base64.b64encode(raw).decode()}
        core = self._core()
        current = await self._call(core.read_namespaced_secret, self.registry_secret, self.namespace, missing_ok=True)
        if current is None:
            body = client.V1Secret(
                metadata=client.V1ObjectMeta(name=self.registry_secret, labels={MANAGED_BY: "mcphost"}),
                type="kubernetes.io/dockerconfigjson",
                data=data,
            )
            await self._call(core.create_namespaced_secret, self.namespace, body, exists_ok=True)
        elif (current.data or {}) != data:
            await self._call(core.patch_namespaced_secret, self.registry_secret, self.namespace, {"data": data})
        return True

    async def _ensure_supporting(self, spec: LaunchSpec, port: int) -> None:
        """The server's claim and the revision's env Secret and Service (each left as it is if present)."""
        core = self._core()
        claim = claim_object(spec, self.data_size, self.storage_class)
        await self._call(core.create_namespaced_persistent_volume_claim, self.namespace, claim, exists_ok=True)
        # The env is the revision's: a retry (same revision) writes the same values again.
        name = object_name(spec.deployment_id)
        if await self._call(core.read_namespaced_secret, name, self.namespace, missing_ok=True) is None:
            await self._call(core.create_namespaced_secret, self.namespace, env_secret(spec), exists_ok=True)
        await self._call(core.create_namespaced_service, self.namespace, service_object(spec, port), exists_ok=True)

    async def launch(self, spec: LaunchSpec) -> Instance:
        image, port, path = self._image(spec)
        apps = self._apps()
        name = object_name(spec.deployment_id)
        found = await self._call(apps.read_namespaced_deployment, name, self.namespace, missing_ok=True)
        if found is None:
            await self._ensure_supporting(spec, port)
            await self._call(
                apps.create_namespaced_deployment,
                self.namespace,
                deployment_object(
                    spec,
                    image,
                    port,
                    path,
                    service_account=self.service_account,
                    pull_secrets=self._pull_secrets(spec, image),
                ),
                exists_ok=True,
            )
        elif not found.spec.replicas:
            await self._call(apps.patch_namespaced_deployment_scale, name, self.namespace, {"spec": {"replicas": 1}})
        return await self._until_addressable(spec.server_id, spec.deployment_id, port, path)

    async def _until_addressable(self, server_id: str, deployment_id: str, port: int, path: str) -> Instance:
        """The instance once the gateway can address it: at once through the Service, or when its pod has
        an IP. A pod that cannot start (its image cannot be pulled) fails the launch with the reason."""
        deadline = time.monotonic() + self.ready_timeout
        while True:
            pods = await self._pods(deployment_id)
            for pod in pods:
                stuck = pod_stuck(pod)
                if stuck:
                    raise (
                        ImageNotFound(f"the pod cannot start: {stuck}")
                        if "Image" in stuck
                        else PermanentFailure(f"the pod cannot start: {stuck}")
                    )
            url = self._url(deployment_id, port, path, pods)
            if url:
                return Instance(
                    runtime=self.name,
                    ref=object_name(deployment_id),
                    deployment_id=deployment_id,
                    server_id=server_id,
                    url=url,
                )
            if time.monotonic() > deadline:
                raise RuntimeFailure(
                    f"no pod of {object_name(deployment_id)} got an address within {self.ready_timeout:.0f} s"
                )
            await asyncio.sleep(0.2)

    def _url(self, deployment_id: str, port: int, path: str, pods: list[Any]) -> str:
        if self.access == "service":
            return f"http://{object_name(deployment_id)}.{self.namespace}.svc:{port}{path}"
        for pod in pods:
            if (
                pod.metadata.deletion_timestamp is None
                and pod.status
                and pod.status.pod_ip
                and pod.status.phase == "Running"
            ):
                return f"http://{pod.status.pod_ip}:{port}{path}"
        return ""

    async def _pods(self, deployment_id: str) -> list[Any]:
        listed = await self._call(
            self._core().list_namespaced_pod, self.namespace, label_selector=f"{K_DEPLOYMENT}={deployment_id}"
        )
        return list(listed.items)

    async def instances(self, server_id: str) -> list[Instance]:
        listed = await self._call(
            self._apps().list_namespaced_deployment, self.namespace, label_selector=f"{K_SERVER}={server_id}"
        )
        found = []
        for deployment in listed.items:
            labels = deployment.metadata.labels or {}
            notes = deployment.metadata.annotations or {}
            deployment_id = labels.get(K_DEPLOYMENT, "")
            pods = await self._pods(deployment_id) if self.access == "pod" else []
            found.append(
                Instance(
                    runtime=self.name,
                    ref=deployment.metadata.name,
                    deployment_id=deployment_id,
                    server_id=labels.get(K_SERVER, ""),
                    url=self._url(deployment_id, int(notes.get(A_PORT, "8080")), notes.get(A_PATH, "/mcp"), pods),
                )
            )
        return found

    async def server_ids(self) -> list[str]:
        listed = await self._call(
            self._apps().list_namespaced_deployment, self.namespace, label_selector=f"{MANAGED_BY}=mcphost"
        )
        return sorted({(d.metadata.labels or {}).get(K_SERVER, "") for d in listed.items} - {""})

    async def status(self, instance: Instance) -> InstanceStatus:
        found = await self._call(self._apps().read_namespaced_deployment, instance.ref, self.namespace, missing_ok=True)
        if found is None:
            return InstanceStatus(state="missing")
        if not found.spec.replicas:
            return InstanceStatus(state="exited", detail="scaled to zero")
        for pod in await self._pods(instance.deployment_id):
            stuck = pod_stuck(pod)
            if stuck:
                return InstanceStatus(state="exited", detail=stuck)
            if pod.status and pod.status.phase in ("Failed", "Succeeded"):
                return InstanceStatus(state="exited", exit_code=pod_exit_code(pod), detail=pod.status.phase)
        return InstanceStatus(state="running")

    async def mark_ready(self, instance: Instance) -> None:
        """Set the readiness gate on the revision's pods: the platform's MCP health check passed."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        condition = {"type": READY_GATE, "status": "True", "reason": "McpHealthy", "lastTransitionTime": now}
        for pod in await self._pods(instance.deployment_id):
            conditions = (pod.status.conditions if pod.status else None) or []
            if any(c.type == READY_GATE and c.status == "True" for c in conditions):
                continue
            await self._call(
                self._core().patch_namespaced_pod_status,
                pod.metadata.name,
                self.namespace,
                {"status": {"conditions": [condition]}},
                missing_ok=True,
            )

    async def stop(self, instance: Instance) -> None:
        await self._call(
            self._apps().patch_namespaced_deployment_scale,
            instance.ref,
            self.namespace,
            {"spec": {"replicas": 0}},
            missing_ok=True,
        )

    async def remove(self, instance: Instance) -> None:
        from kubernetes import client

        core = self._core()
        background = client.V1DeleteOptions(propagation_policy="Background")
        # Raw answers: servers of different versions answer a delete with the object or with a Status.
        raw = {"missing_ok": True, "_preload_content": False}
        await self._call(
            self._apps().delete_namespaced_deployment, instance.ref, self.namespace, body=background, **raw
        )
        await self._call(core.delete_namespaced_service, instance.ref, self.namespace, **raw)
        await self._call(core.delete_namespaced_secret, instance.ref, self.namespace, **raw)

    async def forget_server(self, server_id: str) -> None:
        """The server is deleted: its claim (its /data) goes too."""
        await self._call(
            self._core().delete_namespaced_persistent_volume_claim,
            claim_name(server_id),
            self.namespace,
            missing_ok=True,
        )

    async def logs(self, instance: Instance, tail: int = 200) -> list[str]:
        lines: list[str] = []
        for pod in await self._pods(instance.deployment_id):
            try:
                text = await self._call(
                    self._core().read_namespaced_pod_log,
                    pod.metadata.name,
                    self.namespace,
                    container=CONTAINER,
                    tail_lines=tail,
                )
            except RuntimeFailure as exc:
                lines.append(f"mcphost: the logs of pod {pod.metadata.name} are not available: {exc.message}")
                continue
            lines.extend(str(text or "").splitlines())
        return lines[-tail:]

    async def close(self) -> None:
        if self._api is not None:
            await asyncio.to_thread(self._api.close)
            self._api = None


def _reason(exc: Any) -> str:
    import json

    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    return str(body.get("message") or exc.reason or exc.status)[:500]
