"""The worker process: one Temporal client; the platform's workflows and activities on the shared task
queue, and the runtime steps of the instances on this host on the host's own queue."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client, Schedule, ScheduleAlreadyRunningError, ScheduleUpdate, ScheduleUpdateInput
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Interceptor, Worker

from activities.artifacts import ArtifactActivities
from activities.build import BuildActivities
from activities.evaluation import EvaluationActivities
from activities.governance import GovernanceActivities
from activities.health import HealthActivities
from activities.policy import PolicyActivities
from activities.promotion import PromotionActivities
from activities.prune_history import PruneActivities
from activities.reconcile import ReconcileActivities
from activities.records import RecordActivities
from activities.registry import RegistryActivities
from activities.remediation import RemediationActivities, StartRun
from activities.runtime import RuntimeActivities
from activities.supervision import SupervisionActivities
from activities.vm import VmGuests
from builds.images import ImageBuilder
from builds.package_images import PackageImageBuilder, package_image_config
from core import temporal
from core.db import make_engine, make_sessionmaker
from core.secretstore import store_from_settings
from core.settings import Settings, load_settings_or_exit
from runtimes import build_executors, check_cluster
from runtimes.base import BRIDGE_SOURCE, Executor
from runtimes.kubernetes import KubernetesExecutor
from runtimes.kubernetes_fallback import DockerFallback
from runtimes.vm import VirtualMachineExecutor
from worker.metrics import MetricsInterceptor
from workflows.build import BuildWorkflow
from workflows.contracts.starters import (
    PRUNE_SCHEDULE_ID,
    prune_schedule,
    reconcile_schedule,
    reconcile_schedule_id,
    start_remediation,
)
from workflows.deploy import DeployWorkflow
from workflows.evaluation import EvaluationRunWorkflow
from workflows.governance import GovernanceRunWorkflow
from workflows.promotion import PromotionWorkflow
from workflows.prune_history import PruneHistoryWorkflow
from workflows.push import PushWorkflow
from workflows.reconcile import ReconcileWorkflow
from workflows.remediation import RemediationWorkflow
from workflows.server_lifecycle import DeleteServerWorkflow, StopServerWorkflow
from workflows.supervisor import SupervisorWorkflow

log = logging.getLogger("mcphost.worker")

WORKFLOWS = [
    DeployWorkflow,
    BuildWorkflow,
    PushWorkflow,
    StopServerWorkflow,
    DeleteServerWorkflow,
    SupervisorWorkflow,
    ReconcileWorkflow,
    PruneHistoryWorkflow,
    EvaluationRunWorkflow,
    GovernanceRunWorkflow,
    PromotionWorkflow,
    RemediationWorkflow,
]


def remediation_starter(client: Client, settings: Settings) -> StartRun:
    """How a worker starts a remediation run's workflow (an already started one is left as it is)."""

    async def start(
        run_id: str, server_id: str, requester_id: str, definition: dict[str, Any], workflow_id: str
    ) -> None:
        await start_remediation(
            client,
            settings,
            run_id=run_id,
            server_id=server_id,
            requester_id=requester_id,
            definition=definition,
            workflow_id=workflow_id,
        )

    return start


def start_vms(
    executors: dict[str, Executor], sessionmaker: async_sessionmaker[AsyncSession], settings: Settings
) -> VmGuests | None:
    """The virtual-machine runtime's records: its guests' attestation and the hypervisor's events."""
    vm = executors.get("virtual-machine")
    if not isinstance(vm, VirtualMachineExecutor):
        return None
    guests = VmGuests(sessionmaker, settings)
    vm.event_sink = guests.sink(asyncio.get_running_loop())
    return guests


async def start_kubernetes(executors: dict[str, Executor], registry: RegistryActivities) -> KubernetesExecutor | None:
    """The kubernetes runtime at worker start: its cluster answers (and gets the pull Secret rewritten
    after each registry credential refresh), or it falls back to docker with a warning."""
    unreachable = await check_cluster(executors)
    if unreachable is not None:
        instead = "run on docker" if isinstance(executors["kubernetes"], DockerFallback) else "fail until it answers"
        log.warning("the kubernetes cluster cannot be reached (%s): kubernetes revisions %s", unreachable, instead)
    kube = executors.get("kubernetes")
    if isinstance(kube, KubernetesExecutor):
        registry.on_refreshed.append(kube.sync_pull_secret)
        return kube
    return None


async def run_worker(
    settings: Settings, stop: asyncio.Event | None = None, interceptors: Sequence[Interceptor] = ()
) -> None:
    """Serve both task queues until `stop` is set. `interceptors` come after the platform's own (metrics)."""
    client = await temporal.connect(settings)
    await temporal.ensure_search_attributes(client, settings.temporal_namespace)
    engine = make_engine(settings.database_url, pool_size=5)
    sessionmaker = make_sessionmaker(engine)
    builder = ImageBuilder(settings.docker_host)
    registry = RegistryActivities(sessionmaker, settings, builder)
    # Package images are built with the builder git builds use, on the engine the docker runtime runs them on.
    packages = PackageImageBuilder(package_image_config(settings, BRIDGE_SOURCE), builder)
    executors = build_executors(settings, auth_for=registry.auth_for, package_images=packages)
    kube = await start_kubernetes(executors, registry)
    secrets = store_from_settings(settings)
    remediation = RemediationActivities(
        sessionmaker, settings, start_run=remediation_starter(client, settings), refresh_credentials=registry.refresh
    )
    activities = [
        *RecordActivities(
            sessionmaker,
            settings.state_dir,
            secrets=secrets,
            forget=[kube.forget_server] if kube is not None else [],
            drain_seconds=settings.gateway_drain_seconds,
            session_idle_seconds=settings.gateway_session_idle_seconds,
        ).all(),
        *BuildActivities(sessionmaker, settings, builder).all(),
        *ArtifactActivities(sessionmaker).all(),
        *PolicyActivities(sessionmaker).all(),
        *GovernanceActivities(sessionmaker).all(),
        *PromotionActivities(sessionmaker, settings.container_runtime).all(),
        *PruneActivities(sessionmaker).all(),
        *registry.all(),
        *remediation.all(),
    ]
    # Instances are local to this host, so their runtime steps come through its own queue. The shared
    # queue keeps them too: claim_host is answered there, and runs started before placement send every
    # step there.
    guests = start_vms(executors, sessionmaker, settings)
    if guests is not None:
        guests.on_untrusted = remediation.trigger
    runtime = RuntimeActivities(sessionmaker, executors, settings.env_cipher(), settings, secrets, guests)
    host_activities = [
        *runtime.all(),
        *SupervisionActivities(sessionmaker, runtime).all(),
        *HealthActivities(executors, sessionmaker).all(),
        *ReconcileActivities(sessionmaker, executors).all(),
        # Tests call the instance where it runs; the run's records are written from there too.
        *EvaluationActivities(sessionmaker, executors).all(),
    ]
    # Names the host in the Web UI's history of every task, so where a step ran can be read there.
    identity = f"{os.getpid()}@{settings.worker_host_id}"
    stop = stop or asyncio.Event()
    try:
        async with (
            Worker(
                client,
                task_queue=settings.temporal_task_queue,
                workflows=WORKFLOWS,
                activities=[*activities, *host_activities],
                identity=identity,
                max_concurrent_activities=50,
                # A workflow whose worker died waits this long on that worker's sticky queue before any
                # other worker takes it up (the default is 10 s): part of how soon a deployment resumes.
                sticky_queue_schedule_to_start_timeout=timedelta(seconds=1),
                graceful_shutdown_timeout=timedelta(seconds=10),
                interceptors=[MetricsInterceptor(), *interceptors],
            ),
            Worker(
                client,
                task_queue=settings.host_task_queue,
                activities=host_activities,
                identity=identity,
                max_concurrent_activities=50,
                graceful_shutdown_timeout=timedelta(seconds=10),
                interceptors=[MetricsInterceptor(), *interceptors],
            ),
        ):
            await keep_reconcile_schedule(client, settings)
            await keep_prune_schedule(client, settings)
            log.info(
                "worker ready: task queues %s and %s on %s (runtimes: %s)",
                settings.temporal_task_queue,
                settings.host_task_queue,
                settings.temporal_address,
                ", ".join(executors),
            )
            await stop.wait()
    finally:
        for executor in executors.values():
            await executor.close()
        await engine.dispose()


async def keep_schedule(client: Client, schedule_id: str, schedule: Schedule | None) -> None:
    """Create the schedule, or bring the one there up to date: several workers starting at once all try,
    and those that find it made update it. Its state (paused, a note) stays as an operator set it. None
    removes it. A failure is logged; the worker serves either way."""
    try:
        if schedule is None:
            try:
                await client.get_schedule_handle(schedule_id).delete()
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise
            return
        try:
            await client.create_schedule(schedule_id, schedule)
        except ScheduleAlreadyRunningError:

            def updated(current: ScheduleUpdateInput) -> ScheduleUpdate:
                return ScheduleUpdate(dataclasses.replace(schedule, state=current.description.schedule.state))

            await client.get_schedule_handle(schedule_id).update(updated)
    except RPCError as exc:
        log.warning("the schedule %s could not be set: %s", schedule_id, exc.message)


async def keep_reconcile_schedule(client: Client, settings: Settings) -> None:
    """The schedule of this host's reconciler: created, brought up to date with the settings, or (interval
    0) removed."""
    schedule = reconcile_schedule(settings) if settings.reconcile_interval_seconds > 0 else None
    await keep_schedule(client, reconcile_schedule_id(settings), schedule)


async def keep_prune_schedule(client: Client, settings: Settings) -> None:
    """The installation's history prune, one schedule whichever worker keeps it: created, brought up to date
    with the settings, or (interval 0) removed."""
    schedule = prune_schedule(settings) if settings.prune_history_interval_seconds > 0 else None
    await keep_schedule(client, PRUNE_SCHEDULE_ID, schedule)


def main() -> None:
    settings = load_settings_or_exit()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if settings.worker_metrics_port is not None:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port, addr=settings.bind_address)
        log.info("metrics at http://%s:%d/metrics", settings.bind_address, settings.worker_metrics_port)

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await run_worker(settings, stop)

    asyncio.run(runner())


if __name__ == "__main__":
    main()
