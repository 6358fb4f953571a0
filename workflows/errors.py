"""Reading the reason out of a failure chain (activity and child-workflow errors wrap the real one)."""

from __future__ import annotations

from temporalio.exceptions import ActivityError, ApplicationError, ChildWorkflowError


def failure_reason(err: BaseException) -> str:
    """The readable reason at the bottom of an activity or child workflow failure chain."""
    cause: BaseException | None = err
    while isinstance(cause, ActivityError | ChildWorkflowError) and cause.cause is not None:
        cause = cause.cause
    if isinstance(cause, ApplicationError):
        return cause.message
    return str(cause) if cause else "unknown error"
