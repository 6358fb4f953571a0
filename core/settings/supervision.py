"""Looking after what runs and what is recorded: the supervisor's probes and restarts, the
reconciler, where remediation steps may call, and how long logs, events and webhook deliveries
are kept."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class SupervisionSettings(BaseSettings):
    """Supervision, reconciliation, remediation and retention."""

    supervisor_interval_seconds: float = Field(
        default=15.0, ge=0, description="How often a running server is probed at the MCP level (0: no supervision)."
    )
    supervisor_failure_threshold: int = Field(
        default=3, ge=1, description="Failures within SUPERVISOR_WINDOW_SECONDS that mark a server degraded."
    )
    supervisor_window_seconds: float = Field(default=300.0, gt=0, description="The window failures are counted in.")
    supervisor_backoff_max_seconds: float = Field(
        default=60.0, gt=0, description="Longest wait before a restart (the backoff doubles from 1 s)."
    )
    reconcile_interval_seconds: float = Field(
        default=120.0,
        ge=0,
        description="How often each worker's reconciler sets right deployments whose workflow ended without "
        "recording it and removes instances no deployment owns (0: off).",
    )
    reconcile_grace_seconds: float = Field(
        default=120.0,
        ge=0,
        description="How old a deployment record must be before the reconciler looks at it.",
    )

    # How long records are kept.
    server_log_retention_days: float = Field(default=30.0, gt=0, description="How long server log lines are kept.")
    server_event_retention_days: float = Field(
        default=90.0, gt=0, description="How long telemetry events (build, registry, supervisor) are kept."
    )
    prune_history_interval_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="How often server log lines and telemetry events past their retention are deleted: one "
        "Temporal schedule `prune-history` for the installation, kept by the workers (0: off).",
    )
    webhook_delivery_retention: int = Field(
        default=500, ge=10, description="Webhook delivery records kept per server (the newest)."
    )

    # Remediation playbooks.
    remediation_allow_private_urls: bool = Field(
        default=False,
        description="Let remediation `http` steps call loopback and private addresses (off: public https only).",
    )
