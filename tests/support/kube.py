"""A real Kubernetes control plane for tests: etcd + kube-apiserver + kube-controller-manager +
kube-scheduler v1.20.2 (built from Debian's source package by `tests/support/k8s/build.sh`, cached
under ~/.cache), on loopback. There is no kubelet and no storage provisioner, so `FakeKubelet` plays
both: it binds claims to volumes, runs each pod scheduled on its node as a podman container published
on a loopback address of its own (the pod's IP), reports the pod's status like a kubelet (Ready once
the containers run and every readiness gate is true), and removes containers of deleted pods."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.components import CACHE, free_port, terminate

VERSION = "1.20.2"
BIN = CACHE / f"kubernetes-{VERSION}"
BUILD = Path(__file__).parent / "k8s" / "build.sh"
NODE = "fake-node-1"


def binaries_present() -> bool:
    return all((BIN / b).exists() for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")) and bool(
        shutil.which("etcd")
    )


def ensure_binaries() -> bool:
    """Build (once per machine, ~5 minutes) when on Debian as root; False when they cannot be had."""
    if binaries_present():
        return True
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    subprocess.run([str(BUILD), str(BIN)], check=True)
    return binaries_present()


class Cluster:
    def __init__(self, run_dir: Path) -> None:
        self.run = run_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.token = ""
        self.kubeconfig = run_dir / "admin.kubeconfig"
        self.api_url = ""

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.run / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def start(self) -> Cluster:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.run.mkdir(parents=True, exist_ok=True)
        pki = self.run / "pki"
        pki.mkdir(exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (pki / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
            )
        )
        (pki / "sa.pub").write_bytes(
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        self.token = os.urandom(16).hex()
        (pki / "tokens.csv").write_text(f"{self.token},admin,admin-uid,system:masters\n")
        for _attempt in range(3):
            if self._start_once(pki):
                return self
            self.stop()
        raise RuntimeError(f"the Kubernetes control plane did not start; see {self.run}")

    def _start_once(self, pki: Path) -> bool:
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        shutil.rmtree(self.run / "etcd", ignore_errors=True)
        self._spawn(
            "etcd",
            [
                "etcd",
                "--name=local",
                f"--data-dir={self.run / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=local=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync",
            ],
        )
        self._spawn(
            "apiserver",
            [
                str(BIN / "kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={api_port}",
                f"--cert-dir={pki}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--endpoint-reconciler-type=none",
            ],
        )
        self.api_url = f"https://127.0.0.1:{api_port}"
        deadline = time.monotonic() + 90
        headers = {"Authorization": f"Bearer {self.token}"}
        while True:
            if any(p.poll() is not None for p in self.procs.values()):
                return False  # a port was taken meanwhile, or it failed: the caller tries again
            try:
                if httpx.get(f"{self.api_url}/readyz", headers=headers, verify=False, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        self.kubeconfig.write_text(
            "apiVersion: v1\nkind: Config\n"
            f"clusters:\n- name: local\n  cluster: {{server: '{self.api_url}', "
            f"certificate-authority: '{pki / 'apiserver.crt'}'}}\n"
            f"users:\n- name: admin\n  user: {{token: '{self.token}'}}\n"
            "contexts:\n- name: local\n  context: {cluster: local, user: admin}\ncurrent-context: local\n"
        )
        common = [f"--kubeconfig={self.kubeconfig}", "--bind-address=127.0.0.1", "--secure-port=0", "--port=0"]
        self._spawn(
            "kcm",
            [
                str(BIN / "kube-controller-manager"),
                *common,
                "--leader-elect=false",
                "--controllers=*,-nodelifecycle",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={pki / 'apiserver.crt'}",
            ],
        )
        self._spawn("scheduler", [str(BIN / "kube-scheduler"), *common, "--leader-elect=false"])
        return True

    def stop(self) -> None:
        for name in ("scheduler", "kcm", "apiserver", "etcd"):
            terminate(self.procs.pop(name, None))

    def client(self) -> Any:
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def wait_namespace_ready(self, namespace: str, timeout: float = 60) -> None:
        """Create the namespace and wait for its default ServiceAccount and token (the controller-manager's
        work), as pods cannot be created there before."""
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        core = client.CoreV1Api(self.client())
        try:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
        except ApiException as exc:
            if exc.status != 409:
                raise
        deadline = time.monotonic() + timeout
        while True:
            try:
                if core.read_namespaced_service_account("default", namespace).secrets:
                    return
            except ApiException as exc:
                if exc.status != 404:
                    raise
            if time.monotonic() > deadline:
                raise TimeoutError(f"no default ServiceAccount in {namespace}")
            time.sleep(0.1)


class FakeKubelet:
    """The node's kubelet and the cluster's volume provisioner, as far as the tests need them."""

    def __init__(self, cluster: Cluster, namespace: str, docker_url: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.docker_url = docker_url
        self.containers: dict[str, str] = {}  # pod uid -> container name
        self.addresses: dict[str, str] = {}  # pod uid -> loopback address
        self._next = 10
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []
        self.core: Any = None
        self.docker: Any = None

    def start(self) -> FakeKubelet:
        import docker
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        api = self.cluster.client()
        self.core = client.CoreV1Api(api)
        self.docker = docker.DockerClient(base_url=self.docker_url)
        # Containers a killed earlier run left would hold the loopback addresses this run hands out.
        for left in self.docker.containers.list(all=True, filters={"label": "io.mcphost.test.kubelet=1"}):
            left.remove(force=True)
        node = client.V1Node(
            metadata=client.V1ObjectMeta(name=NODE),
            status=client.V1NodeStatus(
                capacity={"cpu": "32", "memory": "256Gi", "pods": "110"},
                allocatable={"cpu": "32", "memory": "256Gi", "pods": "110"},
            ),
        )
        try:
            self.core.create_node(node)
        except ApiException as exc:
            if exc.status != 409:
                raise
        # The not-ready taint admission puts on a new node is lifted by the node lifecycle controller
        # after kubelet heartbeats; there are none, so lift it here.
        self.core.patch_node(NODE, {"spec": {"taints": []}})
        self.core.patch_node_status(
            NODE, {"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}}
        )
        self._thread = threading.Thread(target=self._loop, name="fake-kubelet", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        for name in list(self.containers.values()):
            self._remove_container(name)
        self.docker.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._provision()
                self._sync_pods()
            except Exception as exc:  # noqa: BLE001 - the loop keeps going; tests read `errors`
                self.errors.append(repr(exc))
            self._stop.wait(0.2)

    def _provision(self) -> None:
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        for claim in self.core.list_namespaced_persistent_volume_claim(self.namespace).items:
            if claim.status.phase != "Pending" or claim.spec.volume_name:
                continue
            name = f"pv-{claim.metadata.uid}"
            volume = client.V1PersistentVolume(
                metadata=client.V1ObjectMeta(name=name),
                spec=client.V1PersistentVolumeSpec(
                    capacity={"storage": claim.spec.resources.requests["storage"]},
                    access_modes=claim.spec.access_modes,
                    host_path=client.V1HostPathVolumeSource(path=f"/tmp/{name}"),
                    persistent_volume_reclaim_policy="Retain",
                    claim_ref=client.V1ObjectReference(
                        namespace=self.namespace, name=claim.metadata.name, uid=claim.metadata.uid
                    ),
                ),
            )
            try:
                self.core.create_persistent_volume(volume)
            except ApiException as exc:
                if exc.status != 409:
                    raise
        # A volume whose claim is gone is released: delete it, as a provisioner's Delete policy would.
        for volume in self.core.list_persistent_volume().items:
            if volume.status.phase in ("Released", "Failed"):
                try:
                    self.core.delete_persistent_volume(volume.metadata.name)
                except ApiException as exc:
                    if exc.status != 404:
                        raise

    def _sync_pods(self) -> None:
        from kubernetes.client.rest import ApiException

        for pod in self.core.list_namespaced_pod(self.namespace).items:
            uid = pod.metadata.uid
            if pod.metadata.deletion_timestamp is not None:
                if uid in self.containers:
                    self._remove_container(self.containers.pop(uid))
                try:
                    self.core.delete_namespaced_pod(pod.metadata.name, self.namespace, grace_period_seconds=0)
                except ApiException as exc:
                    if exc.status != 404:
                        raise
                continue
            if pod.spec.node_name != NODE:
                continue
            if uid not in self.containers:
                self._run(pod)
            self._report(pod)

    def _env(self, pod: Any) -> dict[str, str]:
        import base64

        container = pod.spec.containers[0]
        env: dict[str, str] = {}
        for source in container.env_from or []:
            if source.secret_ref is not None:
                secret = self.core.read_namespaced_secret(source.secret_ref.name, self.namespace)
                env |= {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
        for item in container.env or []:
            env[item.name] = item.value or ""
        return env

    def _run(self, pod: Any) -> None:
        container = pod.spec.containers[0]
        address = f"127.0.0.{self._next}"
        self._next += 1
        port = container.ports[0].container_port
        name = f"kubelet-{pod.metadata.uid[:12]}"
        user = container.security_context.run_as_user if container.security_context else None
        self.docker.containers.run(
            container.image,
            detach=True,
            name=name,
            environment=self._env(pod),
            ports={f"{port}/tcp": (address, port)},
            user=f"{user}:{user}" if user is not None else None,
            cap_drop=["ALL"],
            tmpfs={"/tmp": "rw,mode=1777", "/data": "rw,mode=1777"},
            labels={"io.mcphost.test.kubelet": "1"},
        )
        self.containers[pod.metadata.uid] = name
        self.addresses[pod.metadata.uid] = address

    def _report(self, pod: Any) -> None:
        from kubernetes.client.rest import ApiException

        gates = [g.condition_type for g in pod.spec.readiness_gates or []]
        conditions = {c.type: c.status for c in (pod.status.conditions or [])}
        ready = "True" if all(conditions.get(g) == "True" for g in gates) else "False"
        if pod.status.phase == "Running" and conditions.get("Ready") == ready:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {
            "phase": "Running",
            "podIP": self.addresses[pod.metadata.uid],
            "hostIP": "127.0.0.1",
            "startTime": now,
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": "True"},
                {"type": "Ready", "status": ready, "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True"},
            ],
            "containerStatuses": [
                {
                    "name": pod.spec.containers[0].name,
                    "image": pod.spec.containers[0].image,
                    "imageID": "",
                    "ready": ready == "True",
                    "restartCount": 0,
                    "state": {"running": {"startedAt": now}},
                }
            ],
        }
        try:
            self.core.patch_namespaced_pod_status(pod.metadata.name, self.namespace, {"status": status})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def describe(self) -> str:
        """What the node holds, for a failing test's message: its containers, their state and last log
        lines, and the errors its loop met."""
        lines = [f"kubelet errors: {self.errors[-5:]}"]
        for uid, name in self.containers.items():
            try:
                found = self.docker.containers.get(name)
                state = found.attrs.get("State", {})
                tail = found.logs(tail=5).decode(errors="replace").strip().replace("\n", " | ")
                lines.append(
                    f"{name} pod {uid[:8]} at {self.addresses.get(uid)}: {state.get('Status')} "
                    f"exit {state.get('ExitCode')} {state.get('Error') or ''} logs: {tail}"
                )
            except Exception as exc:  # noqa: BLE001 - a description, never a failure of its own
                lines.append(f"{name}: {exc!r}")
        return "\n".join(lines)

    def _remove_container(self, name: str) -> None:
        import docker.errors

        try:
            self.docker.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass
