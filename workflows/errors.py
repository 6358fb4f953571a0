"""Reading the reason out of a failure chain (activity and child-workflow errors wrap the real one)."""

from __future__ import annotations

from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError, TimeoutType
from temporalio.exceptions import TimeoutError as TemporalTimeout


def failure_reason(err: BaseException) -> str:
    """The readable reason at the bottom of an activity or child workflow failure chain."""
    cause: BaseException | None = err
    while isinstance(cause, ActivityError | ChildWorkflowError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        return cause.message
    if isinstance(cause, TemporalTimeout) and cause.type == TimeoutType.SCHEDULE_TO_START:
        return "no worker of the host this step must run on took it up in time: that host's worker is gone"
    return str(cause) if cause else "unknown error"
