"""The docker runtime's engine plumbing: the Docker Engine API clients (DOCKER_HOST's, and the one gVisor
containers are made through), how engine errors become the platform's failures, whether the engine is
Podman, the checks that a gVisor container really runs on gVisor, and each server's own network.

`DockerEngine` is the base of `runtimes.docker.DockerExecutor`, whose `__init__` sets the attributes
declared here.
"""

from __future__ import annotations

import asyncio
from typing import Any

import docker
from docker.errors import APIError, DockerException, NotFound

from core.failures import PermanentFailure, RuntimeFailure
from runtimes.base import LABEL_SERVER
from runtimes.docker_spec import network_name


class IsolationUnavailable(PermanentFailure):
    """The engine cannot give the isolation a server must run under: the deployment fails rather than
    run it under less."""

    kind = "runtime_unavailable"


class DockerEngine:
    """The connection to the container engine and what the runtime asks of the engine itself."""

    base_url: str | None
    gvisor_runtime: str
    gvisor_base_url: str | None
    _client: docker.DockerClient | None
    _gvisor_client: docker.DockerClient | None
    _gvisor_known: bool
    _podman: bool | None

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = (
                    docker.DockerClient(base_url=self.base_url, timeout=120)
                    if self.base_url
                    else docker.from_env(timeout=120)
                )
            except DockerException as exc:
                raise RuntimeFailure(
                    f"cannot reach the Docker Engine API at {self.base_url or 'DOCKER_HOST'}: {exc}"
                ) from None
        return self._client

    def _gvisor_docker(self) -> docker.DockerClient:
        """Where gVisor containers are made: DOCKER_HOST's engine, or CONTAINER_GVISOR_DOCKER_HOST's service of it."""
        if self.gvisor_base_url is None:
            return self._docker()
        if self._gvisor_client is None:
            try:
                self._gvisor_client = docker.DockerClient(base_url=self.gvisor_base_url, timeout=120)
            except DockerException as exc:
                raise RuntimeFailure(
                    f"cannot reach CONTAINER_GVISOR_DOCKER_HOST ({self.gvisor_base_url}): {exc}"
                ) from None
        return self._gvisor_client

    async def _check_gvisor_runtime(self) -> None:
        if self._gvisor_known:
            return
        info = await self._call(self._gvisor_docker().info)
        known = sorted(info.get("Runtimes") or {})
        if self.gvisor_runtime not in known:
            raise IsolationUnavailable(
                f"the container engine has no runtime {self.gvisor_runtime!r} (it has: {', '.join(known) or 'none'}); "
                'register gVisor in containers.conf ([engine.runtimes] runsc = ["/usr/local/bin/runsc-netns"], a '
                'script running `exec /usr/bin/runsc --network=host "$@"`) or daemon.json ("runtimes": {"runsc": '
                '{"path": "/usr/bin/runsc"}}), or set CONTAINER_GVISOR_RUNTIME to the name it has there'
            )
        self._gvisor_known = True

    async def _oci_runtime(self, container: Any) -> str:
        """The OCI runtime a made container runs on, as the engine records it. Podman's Docker-compatible
        inspect says `oci` for every container; its own API names the runtime."""
        if not await self._is_podman():
            return str((container.attrs.get("HostConfig") or {}).get("Runtime") or "")
        api = self._docker().api
        response = await self._call(api.get, f"{api.base_url}/v4.0.0/libpod/containers/{container.id}/json", timeout=60)
        if response.status_code == 404:
            if self.gvisor_base_url is None:
                raise RuntimeFailure(f"container {container.id[:12]} went away while being inspected")
            raise IsolationUnavailable(
                "CONTAINER_GVISOR_DOCKER_HOST is not a service of DOCKER_HOST's engine (a container made through "
                "it is unknown to DOCKER_HOST): both must share the engine's storage"
            )
        if response.status_code >= 400:
            raise RuntimeFailure(f"inspecting the container failed: {response.text[:300]}")
        return str(response.json().get("OCIRuntime") or "")

    async def _confirm_gvisor(self, container: Any) -> None:
        """Refuse (and remove) a container made for gVisor that the engine would run on another runtime:
        Podman's API service ignores a per-container runtime and uses its own default."""
        found = await self._oci_runtime(container)
        if found == self.gvisor_runtime:
            return
        await self._call(container.remove, force=True)
        hint = (
            "Podman's API service runs every container on its own default runtime: start a second service of "
            f"the same engine with `podman --runtime {self.gvisor_runtime} system service` and point "
            "CONTAINER_GVISOR_DOCKER_HOST at it"
            if await self._is_podman()
            else f"check that the engine runs containers on the runtime {self.gvisor_runtime!r} it lists"
        )
        raise IsolationUnavailable(
            f"the container engine would run this server on runtime {found or 'unknown'!r}, not gVisor's "
            f"{self.gvisor_runtime!r}; it was not started. {hint}"
        )

    async def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except (PermanentFailure, RuntimeFailure):
            raise
        except NotFound:
            raise
        except APIError as exc:
            if exc.status_code is not None and 400 <= exc.status_code < 500 and exc.status_code != 404:
                raise PermanentFailure(f"container engine rejected the request: {exc.explanation or exc}") from None
            raise RuntimeFailure(f"container engine error: {exc.explanation or exc}") from None
        except DockerException as exc:
            raise RuntimeFailure(f"container engine unreachable: {exc}") from None

    async def _is_podman(self) -> bool:
        if self._podman is None:
            version = await self._call(self._docker().version)
            components = version.get("Components") or []
            self._podman = any("podman" in str(c.get("Name", "")).lower() for c in components)
        return self._podman

    async def ping(self) -> bool:
        try:
            return bool(await self._call(self._docker().ping))
        except RuntimeFailure:
            return False

    # ---- the server's network --------------------------------------------------------------------

    async def _ensure_network(self, server_id: str) -> str:
        """The server's network, made on first use; concurrent launches may both try, one wins."""
        client = self._docker()
        name = network_name(server_id)
        try:
            await self._call(client.networks.get, name)
            return name
        except NotFound:
            pass
        labels = {LABEL_SERVER: server_id}
        try:
            if await self._is_podman():
                await self._call(self._create_podman_network, name, labels)
            else:
                await self._call(client.networks.create, name, driver="bridge", labels=labels, check_duplicate=True)
        except RuntimeFailure as exc:
            # Podman answers a duplicate with 409 or 500 depending on the endpoint; both say so.
            if "already" not in exc.message.lower():
                raise
        return name

    def _create_podman_network(self, name: str, labels: dict[str, str]) -> None:
        # Podman's bridges route to each other unless isolated, and its Docker-compatible endpoint drops
        # network options, so this goes through its own API. Docker isolates user-defined bridges from
        # each other by default.
        api = self._docker().api
        response = api.post(
            f"{api.base_url}/v4.0.0/libpod/networks/create",
            json={"name": name, "driver": "bridge", "labels": labels, "options": {"isolate": "true"}},
            timeout=60,
        )
        if response.status_code >= 400:
            raise APIError("creating the network failed", response=response, explanation=response.text)

    async def _remove_network_if_unused(self, server_id: str) -> None:
        """Best effort: a network left behind costs a bridge, not safety, and the next launch reuses it."""
        client = self._docker()
        try:
            remaining = await self._call(
                client.containers.list, all=True, filters={"label": f"{LABEL_SERVER}={server_id}"}
            )
            if remaining:
                return
            network = await self._call(client.networks.get, network_name(server_id))
            await self._call(network.remove)
        except (NotFound, RuntimeFailure, ValueError):
            pass
