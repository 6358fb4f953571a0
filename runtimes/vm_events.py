"""The virtual-machine runtime's hypervisor events: libvirt's lifecycle event and detail codes as words
(`describe_event`), the sink they are handed to, and the one thread per process that runs libvirt's event
loop (`EventPump`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("mcphost.runtime.vm")

# (domain name, server id, deployment id, event, detail): what the hypervisor reported.
EventSink = Callable[[str, str, str, str, str], None]
# libvirt's lifecycle event and detail codes, as words.
EVENTS = ["defined", "undefined", "started", "suspended", "resumed", "stopped", "shutdown", "pmsuspended", "crashed"]
STOP_DETAILS = ["shutdown", "destroyed", "crashed", "migrated", "saved", "failed", "from-snapshot"]


def describe_event(event: int, detail: int) -> tuple[str, str]:
    """A lifecycle event and its detail as words; a stop by a crash is the event `crashed`."""
    what = EVENTS[event] if 0 <= event < len(EVENTS) else f"event-{event}"
    how = STOP_DETAILS[detail] if what == "stopped" and 0 <= detail < len(STOP_DETAILS) else str(detail)
    if what == "stopped" and how == "crashed":
        what = "crashed"
    return what, how


class EventPump:
    """libvirt delivers domain events through an event loop registered before the first connection; one
    thread per process runs it and calls each executor's callback."""

    started = False
    lock = threading.Lock()

    @classmethod
    def ensure(cls) -> None:
        import libvirt

        with cls.lock:
            if cls.started:
                return
            libvirt.virEventRegisterDefaultImpl()  # must come before the first connection is opened

            def run() -> None:
                while True:
                    try:
                        libvirt.virEventRunDefaultImpl()
                    except Exception:  # noqa: BLE001 - the pump must outlive a bad callback
                        log.exception("libvirt event loop iteration failed")

            threading.Thread(target=run, name="libvirt-events", daemon=True).start()
            cls.started = True
