"""Guests of the virtual-machine runtime: launched only when they attest, otherwise replaced by docker (or
kubernetes) as the policy engine says; their lifecycle events and posture changes recorded.

A launch on a VM asks the guest's attestation agent for a quote over a nonce issued for that launch,
verifies it (core.attestation), keeps the posture on the guest's `runtime_vm_instances` row and every
change of it in `runtime_vm_trust_history` (with a notification per change, for `/api/policy/stream`),
and stores the placement decision (core.policy.vm_placement) in `runtime_policy_decisions`. A retried
launch reads that decision first, so a revision is placed once.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.exceptions import ApplicationError

from core.attestation import Verdict, now_utc, parse_measurements, parse_trust_roots, verify
from core.db import SERVERS_CHANNEL, notify
from core.models import PolicyDecision, Server, ServerLog, VmEvent, VmInstance, VmTrustChange
from core.policy import vm_placement
from core.settings import Settings
from runtimes.base import Executor, Instance, LaunchSpec
from runtimes.vm import NAME, VirtualMachineExecutor
from runtimes.vm_events import EventSink

log = logging.getLogger("mcphost.vm")

DECISION_PREFIX = "vm-attestation:"
QUOTE_POLL_SECONDS = 0.25


class VmGuests:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> None:
        self.sessionmaker = sessionmaker
        self.settings = settings
        self.roots = parse_trust_roots(settings.vm_attestation_trust_roots)
        self.measurements = parse_measurements(settings.vm_attestation_measurements)
        self.max_age = timedelta(seconds=settings.vm_attestation_max_age_seconds)
        # Started with (server id, trigger, detail) when a guest does not attest: the bound playbooks run.
        self.on_untrusted: Callable[[str, str, str], Awaitable[list[str]]] | None = None

    # -- hypervisor events -------------------------------------------------------------------------------

    def sink(self, loop: asyncio.AbstractEventLoop) -> EventSink:
        """A callback for libvirt's event thread that records each event from `loop`."""

        def deliver(domain: str, server_id: str, deployment_id: str, event: str, detail: str) -> None:
            if loop.is_closed():
                return
            loop.call_soon_threadsafe(
                lambda: loop.create_task(self.record_event(domain, server_id, deployment_id, event, detail))
            )

        return deliver

    async def record_event(self, domain: str, server_id: str, deployment_id: str, event: str, detail: str) -> None:
        try:
            server = uuid.UUID(server_id)
            deployment = uuid.UUID(deployment_id)
        except ValueError:
            # An undefined domain no longer carries its metadata: find the guest by its deployment.
            try:
                deployment = uuid.UUID(deployment_id)
            except ValueError:
                return
            async with self.sessionmaker() as session:
                found = await session.scalar(select(VmInstance.server_id).where(VmInstance.deployment_id == deployment))
            if found is None:
                return
            server = found
        try:
            async with self.sessionmaker() as session, session.begin():
                session.add(
                    VmEvent(server_id=server, deployment_id=deployment, domain=domain, event=event, detail=detail)
                )
                await session.execute(
                    update(VmInstance)
                    .where(VmInstance.deployment_id == deployment)
                    .values(state=event, updated_at=now_utc())
                )
        except IntegrityError:
            pass  # the server is gone: its guests' history went with it
        except Exception:  # noqa: BLE001 - an event lost to a database outage is logged, not fatal
            log.warning("could not record VM event %s of %s", event, domain, exc_info=True)

    # -- the attested launch -----------------------------------------------------------------------------

    async def launch(
        self, executors: Mapping[str, Executor], vm: VirtualMachineExecutor, spec: LaunchSpec, *, fresh: bool = False
    ) -> tuple[Instance, list[str]]:
        """The revision's instance: its guest once that attests as trusted, else the fallback runtime's.
        `fresh` (a restart) asks the guest to attest again even when the revision was placed on it before.
        Returns the instance and the notes of the placement."""
        prior = await self._prior(spec.deployment_id)
        if prior is not None and prior.backend != NAME:
            return await self._fallback(executors, prior.backend, spec), list(prior.notes)
        instance = await vm.launch(spec)
        await self._upsert_guest(vm, spec, instance)
        if prior is not None and not fresh:
            return instance, list(prior.notes)
        nonce = secrets.token_urlsafe(24)
        verdict, quote = await self._attest(vm, instance, nonce)
        await self._record_posture(spec, instance, verdict, quote)
        if verdict.outcome in ("untrusted", "stale") and self.on_untrusted is not None:
            try:
                await self.on_untrusted(spec.server_id, "untrusted", verdict.note)
            except Exception:  # noqa: BLE001 - remediation is best effort; placement goes on
                log.warning("could not start remediation for server %s", spec.server_id, exc_info=True)
        enabled = [name for name in executors if name != NAME]
        decision = vm_placement(verdict.outcome, verdict.note, enabled)
        key = DECISION_PREFIX + spec.deployment_id + ("" if prior is None else f":{nonce[:16]}")
        stored = await self._store_decision(spec, key, decision.allowed, decision.backend, decision.notes, verdict)
        if stored.backend == NAME and stored.allowed:
            return instance, list(stored.notes)
        await vm.remove(instance)
        if not stored.allowed:
            raise ApplicationError(
                f"the guest did not attest ({verdict.note}) and no docker or kubernetes runtime is enabled to run "
                "this revision instead",
                type="attestation_failed",
                non_retryable=True,
            )
        return await self._fallback(executors, stored.backend, spec), list(stored.notes)

    async def _prior(self, deployment_id: str) -> PolicyDecision | None:
        async with self.sessionmaker() as session:
            return await session.scalar(
                select(PolicyDecision)
                .where(PolicyDecision.decision_key.startswith(DECISION_PREFIX + deployment_id, autoescape=True))
                .order_by(PolicyDecision.id.desc())
                .limit(1)
            )

    async def _fallback(self, executors: Mapping[str, Executor], backend: str, spec: LaunchSpec) -> Instance:
        executor = executors[backend]
        await executor.prepare(spec)
        return await executor.launch(spec)

    async def _upsert_guest(self, vm: VirtualMachineExecutor, spec: LaunchSpec, instance: Instance) -> None:
        address = instance.url.split("//", 1)[-1].split(":", 1)[0]
        async with self.sessionmaker() as session, session.begin():
            await session.execute(
                insert(VmInstance)
                .values(
                    id=uuid.uuid4(),
                    server_id=uuid.UUID(spec.server_id),
                    deployment_id=uuid.UUID(spec.deployment_id),
                    domain=instance.ref,
                    uri=vm.uri,
                    address=address,
                    memory_mib=vm.memory_mib,
                    vcpus=vm.vcpus,
                    state="started",
                    posture="pending",
                )
                .on_conflict_do_update(
                    index_elements=["deployment_id"], set_={"address": address, "updated_at": now_utc()}
                )
            )

    async def _attest(
        self, vm: VirtualMachineExecutor, instance: Instance, nonce: str
    ) -> tuple[Verdict, dict[str, object] | None]:
        """Ask until the guest's agent answers (it may still be booting) or the boot timeout passes."""
        async with self.sessionmaker() as session, session.begin():
            await session.execute(
                update(VmInstance)
                .where(VmInstance.deployment_id == uuid.UUID(instance.deployment_id))
                .values(nonce=nonce, updated_at=now_utc())
            )
        deadline = time.monotonic() + vm.boot_timeout
        quote = await vm.quote(instance, nonce)
        while quote is None and time.monotonic() < deadline:
            await asyncio.sleep(QUOTE_POLL_SECONDS)
            quote = await vm.quote(instance, nonce)
        verdict = verify(
            quote, roots=self.roots, measurements=self.measurements, nonce=nonce, max_age=self.max_age, now=now_utc()
        )
        return verdict, quote

    async def _record_posture(
        self, spec: LaunchSpec, instance: Instance, verdict: Verdict, quote: dict[str, object] | None
    ) -> None:
        report = quote.get("report") if isinstance(quote, dict) else None
        report = report if isinstance(report, dict) else {}
        measurement = str(report.get("measurement", ""))[:128] or None
        key_id = str(report.get("key_id", ""))[:100] or None
        deployment = uuid.UUID(spec.deployment_id)
        async with self.sessionmaker() as session, session.begin():
            guest = await session.scalar(
                select(VmInstance).where(VmInstance.deployment_id == deployment).with_for_update()
            )
            previous = guest.posture if guest is not None and guest.attested_at is not None else None
            if guest is not None:
                guest.posture = verdict.outcome
                guest.posture_reason = verdict.reason
                guest.measurement = measurement
                guest.attested_at = now_utc()
                guest.updated_at = now_utc()
            if previous == verdict.outcome:
                return
            session.add(
                VmTrustChange(
                    server_id=uuid.UUID(spec.server_id),
                    deployment_id=deployment,
                    domain=instance.ref,
                    previous=previous,
                    posture=verdict.outcome,
                    reason=verdict.reason,
                    note=verdict.note,
                    measurement=measurement,
                    key_id=key_id,
                )
            )
            owner = await session.scalar(select(Server.owner_id).where(Server.id == uuid.UUID(spec.server_id)))
            payload = {"kind": "trust", "id": spec.server_id, "owner_id": str(owner), "posture": verdict.outcome}
            await notify(session, SERVERS_CHANNEL, payload)

    async def _store_decision(
        self,
        spec: LaunchSpec,
        key: str,
        allowed: bool,
        backend: str,
        notes: list[str],
        verdict: Verdict,
    ) -> PolicyDecision:
        """The decision under `key`: this one, or the one an earlier attempt stored."""
        async with self.sessionmaker() as session, session.begin():
            added = await session.execute(
                insert(PolicyDecision)
                .values(
                    server_id=uuid.UUID(spec.server_id),
                    deployment_id=uuid.UUID(spec.deployment_id),
                    decision_key=key,
                    allowed=allowed,
                    backend=backend,
                    notes=notes,
                    facts={"requested": NAME, "posture": verdict.outcome, "reason": verdict.reason},
                )
                .on_conflict_do_nothing(index_elements=["decision_key"])
                .returning(PolicyDecision.id)
            )
            if added.first() is not None and backend != NAME:
                session.add(
                    ServerLog(
                        server_id=uuid.UUID(spec.server_id),
                        message=f"the guest did not attest ({verdict.note}): "
                        + (f"running on {backend} instead" if allowed else "not launched"),
                    )
                )
        async with self.sessionmaker() as session:
            stored = await session.scalar(select(PolicyDecision).where(PolicyDecision.decision_key == key))
        assert stored is not None
        return stored
