"""Activities that act on runtimes: prepare a source, launch, retire and stop instances.

The deployment's spec (source and config env, which may hold secrets) is read from the database
here rather than passed through workflow history, so secrets never enter Temporal's history.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.common import as_application_error, heartbeating, open_env
from activities.records import RETIRED, InstanceRecord
from activities.vm import VmGuests
from core.crypto import EnvCipher, SecretsKeyError
from core.failures import RuntimeFailure
from core.isolation import effective_isolation, isolation_refusal
from core.models import (
    BuildArtifactRun,
    Deployment,
    PolicyDecision,
    Server,
    ServerLog,
    ServerSecret,
    ServerSecretEvent,
    User,
)
from core.policy import FALLBACK_ORDER
from core.secretstore import SecretStore, SecretStoreError
from core.settings import Settings
from core.sources import GitSource, ImageSource, parse_source
from core.tenancy import Resources, server_data_dir, slot_uid
from runtimes.base import Executor, Instance, LaunchSpec
from runtimes.kubernetes_fallback import DockerFallback
from runtimes.vm import VirtualMachineExecutor


@dataclass
class RetireInput:
    server_id: str
    keep_deployment_id: str | None = None
    remove: bool = True


@dataclass
class RetireResult:
    stopped_deployment_ids: list[str] = field(default_factory=list)


@dataclass
class HostClaim:
    host_queue: str
    host_id: str


def to_record(instance: Instance, host_queue: str = "") -> InstanceRecord:
    return InstanceRecord(
        runtime=instance.runtime,
        ref=instance.ref,
        deployment_id=instance.deployment_id,
        server_id=instance.server_id,
        url=instance.url,
        host_queue=host_queue,
    )


def from_record(record: InstanceRecord) -> Instance:
    return Instance(
        runtime=record.runtime,
        ref=record.ref,
        deployment_id=record.deployment_id,
        server_id=record.server_id,
        url=record.url,
    )


def server_resources(server: Server, settings: Settings) -> Resources:
    return Resources(
        cpu=server.cpu_limit or settings.default_cpu_limit,
        memory_mib=server.memory_limit or settings.default_memory_limit,
        pids=settings.sandbox_pids_limit,
        gpu=bool(server.use_gpu),
    )


class RuntimeActivities:
    def __init__(
        self,
        sessionmaker: async_sessionmaker[AsyncSession],
        executors: Mapping[str, Executor],
        cipher: EnvCipher,
        settings: Settings | None = None,
        secrets: SecretStore | None = None,
        guests: VmGuests | None = None,
    ) -> None:
        self.sessionmaker = sessionmaker
        self.executors = executors
        self.cipher = cipher
        self.settings = settings
        self.secrets = secrets or SecretStore(cipher)
        self.guests = guests

    async def start_instance(self, executor: Executor, spec: LaunchSpec, *, fresh: bool = False) -> Instance:
        """Launch on `executor`; a virtual machine serves only once it attests (else its fallback does)."""
        if isinstance(executor, VirtualMachineExecutor):
            if self.guests is None:
                raise ApplicationError("this worker keeps no VM records", type="runtime_unavailable")
            instance, _notes = await self.guests.launch(self.executors, executor, spec, fresh=fresh)
            return instance
        return await executor.launch(spec)

    @property
    def host_queue(self) -> str:
        return self.settings.host_task_queue if self.settings else ""

    def executor(self, name: str) -> Executor:
        executor = self.executors.get(name)
        if executor is None:
            raise ApplicationError(
                f"runtime {name!r} is not enabled on this worker (enabled: {', '.join(self.executors)})",
                type="runtime_unavailable",
                non_retryable=True,
            )
        return executor

    async def secret_env(self, server_id: uuid.UUID, deployment_id: str) -> dict[str, str]:
        """The server's secrets in clear, for a launch only; each read is recorded as `injected`."""
        async with self.sessionmaker() as session:
            rows = (
                await session.scalars(
                    select(ServerSecret).where(ServerSecret.server_id == server_id).order_by(ServerSecret.name)
                )
            ).all()
        if not rows:
            return {}
        values: dict[str, str] = {}
        for row in rows:
            try:
                values[row.name] = await self.secrets.read(row.backend, row.sealed, row.vault_path, row.vault_version)
            except SecretsKeyError as exc:
                raise ApplicationError(f"secret {row.name}: {exc}", type="secrets_key", non_retryable=True) from None
            except SecretStoreError as exc:
                raise ApplicationError(
                    f"secret {row.name}: {exc}", type="secret_store", non_retryable=exc.permanent
                ) from None
        async with self.sessionmaker() as session, session.begin():
            session.add_all(
                ServerSecretEvent(
                    server_id=server_id,
                    name=row.name,
                    action="injected",
                    version=row.version,
                    actor="worker",
                    deployment_id=uuid.UUID(deployment_id),
                )
                for row in rows
            )
        return values

    async def launch_spec(self, deployment_id: str, *, with_secrets: bool = False) -> tuple[Executor, LaunchSpec]:
        """What a runtime needs to prepare or launch the deployment. Secrets are read only for a launch
        (`with_secrets`): an install step never gets them."""
        async with self.sessionmaker() as session:
            row = (
                await session.execute(
                    select(Deployment, Server, User.role)
                    .join(Server, Server.id == Deployment.server_id)
                    .join(User, User.id == Server.owner_id)
                    .where(Deployment.id == uuid.UUID(deployment_id))
                )
            ).first()
        if row is None:
            raise ApplicationError(f"deployment {deployment_id} no longer exists", type="gone", non_retryable=True)
        deployment, server, owner_role = row
        runtime = deployment.runtime or "process"
        # Checked when the deployment was opened too; the server's choice may have changed since.
        refusal = isolation_refusal(server.isolation, runtime)
        if refusal is not None:
            raise ApplicationError(refusal, type="runtime_rejected", non_retryable=True)
        source = parse_source(deployment.spec["source"])
        builder: str | None = None
        if isinstance(source, GitSource):
            # A git source runs the image its build produced (recorded by the build/push steps).
            built = deployment.spec.get("built")
            if not built:
                raise ApplicationError("this git deployment has no built image yet", type="gone", non_retryable=True)
            source = ImageSource(image=built["image"], port=built["port"], path=built["path"])
            builder = await self._image_builder(deployment, server)
        settings = self.settings
        env = open_env(self.cipher, deployment.spec.get("env"))
        if with_secrets:
            env |= await self.secret_env(deployment.server_id, deployment_id)
        spec = LaunchSpec(
            server_id=str(deployment.server_id),
            deployment_id=deployment_id,
            slug=server.slug,
            source=source,
            env=env,
            resources=server_resources(server, settings) if settings else None,
            uid=slot_uid(server.uid_slot, settings.sandbox_uid_base) if settings else None,
            data_dir=server_data_dir(settings.state_dir, server.id) if settings else None,
            trusted=owner_role == "admin",
            image_builder=builder,
            isolation=effective_isolation(
                server.isolation, settings.container_isolation if settings else "engine", admin=owner_role == "admin"
            ),
        )
        return self.executor(runtime), spec

    async def _image_builder(self, deployment: Deployment, server: Server) -> str | None:
        """The server whose build the deployment's artifact is, when that server has the same owner: the
        runtimes run a platform image only for the server that built it or, through this, a promotion
        of its owner's."""
        if deployment.artifact_id is None:
            return None
        async with self.sessionmaker() as session:
            found = await session.scalar(
                select(BuildArtifactRun.server_id)
                .join(Server, Server.id == BuildArtifactRun.server_id)
                .where(BuildArtifactRun.id == deployment.artifact_id, Server.owner_id == server.owner_id)
            )
        return str(found) if found is not None else None

    @activity.defn(name="claim_host")
    async def claim_host(self, deployment_id: str) -> HostClaim:
        """Place a deployment on the host of whichever worker picks this up from the shared queue: its
        instance will live there, so every later runtime step of it is sent to that host's queue."""
        if not self.host_queue:
            raise ApplicationError("this worker has no host queue", type="runtime_unavailable", non_retryable=True)
        assert self.settings is not None
        return HostClaim(host_queue=self.host_queue, host_id=self.settings.worker_host_id)

    @activity.defn(name="prepare_source")
    async def prepare_source(self, deployment_id: str) -> str:
        executor, spec = await self.launch_spec(deployment_id)
        try:
            return await heartbeating(executor.prepare(spec), "preparing")
        except RuntimeFailure as exc:
            raise as_application_error(exc) from None

    @activity.defn(name="launch_instance")
    async def launch_instance(self, deployment_id: str) -> InstanceRecord:
        executor, spec = await self.launch_spec(deployment_id, with_secrets=True)
        try:
            instance = await heartbeating(self.start_instance(executor, spec), "launching")
        except RuntimeFailure as exc:
            raise as_application_error(exc) from None
        if not instance.url:
            raise ApplicationError("the instance started but publishes no port", type="no_port")
        if isinstance(executor, DockerFallback):
            await self._record_fallback(spec, executor.reason)
        # Whichever queue brought the launch here, the instance is local to this worker's host.
        return to_record(instance, self.host_queue)

    async def _record_fallback(self, spec: LaunchSpec, reason: str) -> None:
        """A kubernetes revision launched on docker (the cluster was unreachable): a policy note says so,
        once per deployment."""
        notes = ["runtime:kubernetes:unreachable", "runtime:fallback:docker"]
        async with self.sessionmaker() as session, session.begin():
            added = await session.execute(
                insert(PolicyDecision)
                .values(
                    server_id=uuid.UUID(spec.server_id),
                    deployment_id=uuid.UUID(spec.deployment_id),
                    decision_key=f"runtime-fallback:{spec.deployment_id}",
                    allowed=True,
                    backend="docker",
                    notes=notes,
                    facts={"requested": "kubernetes", "reason": reason[:500]},
                )
                .on_conflict_do_nothing(index_elements=["decision_key"])
                .returning(PolicyDecision.id)
            )
            if added.first() is not None:
                session.add(
                    ServerLog(
                        server_id=uuid.UUID(spec.server_id),
                        message=f"the kubernetes cluster cannot be reached ({reason[:300]}): running on docker instead",
                    )
                )

    @activity.defn(name="retire_instances")
    async def retire_instances(self, data: RetireInput) -> RetireResult:
        """Stop (and remove) the server's instances that belong to earlier revisions, on every runtime.

        With ``keep_deployment_id`` (a deploy retiring what it replaced), the instance of the revision
        the gateway serves right now and those of newer revisions are kept too: a slow deploy that
        finishes after a newer one has taken over must not stop the newer one. Without it (a stop or a
        delete), everything goes.
        """
        protected = await self._protected(data) if data.keep_deployment_id else set()
        # Read before looking at the runtimes: an instance recorded after the look may not have been seen.
        recorded_here = await self._recorded_here(data.server_id)
        stopped: list[str] = []
        for executor in self.executors.values():
            try:
                instances = await heartbeating(executor.instances(data.server_id), "listing")
                for instance in instances:
                    if instance.deployment_id in protected:
                        continue
                    await heartbeating(
                        executor.remove(instance) if data.remove else executor.stop(instance), "stopping"
                    )
                    stopped.append(instance.deployment_id)
            except RuntimeFailure as exc:
                raise as_application_error(exc) from None
        if data.remove:
            await self._mark_retired(recorded_here - protected)
        return RetireResult(stopped_deployment_ids=sorted(set(stopped)))

    async def _recorded_here(self, server_id: str) -> set[str]:
        """The server's deployments whose instance records name this host and are not retired yet."""
        if not self.host_queue:
            return set()
        async with self.sessionmaker() as session:
            rows = await session.execute(
                select(Deployment.id, Deployment.instance).where(Deployment.server_id == uuid.UUID(server_id))
            )
            return {
                str(dep_id)
                for dep_id, instance in rows.all()
                if instance and instance.get("host_queue") == self.host_queue and not instance.get(RETIRED)
            }

    async def _mark_retired(self, deployment_ids: set[str]) -> None:
        """Nothing of these is left on this host (removed now, or gone before): later retirements of the
        server need not wait for this host, which may be gone by then."""
        if not deployment_ids:
            return
        async with self.sessionmaker() as session, session.begin():
            for deployment in await session.scalars(
                select(Deployment).where(Deployment.id.in_([uuid.UUID(d) for d in deployment_ids])).with_for_update()
            ):
                if deployment.instance and not deployment.instance.get(RETIRED):
                    deployment.instance = {**deployment.instance, RETIRED: True}

    async def _protected(self, data: RetireInput) -> set[str]:
        assert data.keep_deployment_id is not None
        protected = {data.keep_deployment_id}
        async with self.sessionmaker() as session:
            server = await session.get(Server, uuid.UUID(data.server_id))
            keep = await session.get(Deployment, uuid.UUID(data.keep_deployment_id))
            if server is not None and server.active_deployment_id is not None:
                protected.add(str(server.active_deployment_id))
            if keep is not None:
                newer = await session.scalars(
                    select(Deployment.id).where(Deployment.server_id == keep.server_id, Deployment.seq > keep.seq)
                )
                protected.update(str(dep_id) for dep_id in newer)
        return protected

    @activity.defn(name="remove_deployment_instance")
    async def remove_deployment_instance(self, record: InstanceRecord) -> None:
        executor = self.executor(record.runtime)
        try:
            await heartbeating(executor.remove(from_record(record)), "removing")
        except RuntimeFailure as exc:
            raise as_application_error(exc) from None

    @activity.defn(name="remove_deployment_instances")
    async def remove_deployment_instances(self, deployment_id: str) -> None:
        """Clean up whatever a failed deployment left running, found by looking at the runtime."""
        async with self.sessionmaker() as session:
            deployment = await session.get(Deployment, uuid.UUID(deployment_id))
        if deployment is None:
            return
        # A VM revision whose guest did not attest runs on its fallback: look there too. (A kubernetes
        # revision's docker fallback lists its instances itself.) A runtime not enabled here can hold nothing.
        runtime = deployment.runtime or "process"
        names = [runtime, *(FALLBACK_ORDER if runtime == "virtual-machine" else ())]
        try:
            for executor in [self.executors[n] for n in names if n in self.executors]:
                for instance in await executor.instances(str(deployment.server_id)):
                    if instance.deployment_id == deployment_id:
                        await heartbeating(executor.remove(instance), "removing")
        except RuntimeFailure as exc:
            raise as_application_error(exc) from None

    def all(self) -> list[Any]:
        return [
            self.claim_host,
            self.prepare_source,
            self.launch_instance,
            self.retire_instances,
            self.remove_deployment_instance,
            self.remove_deployment_instances,
        ]
