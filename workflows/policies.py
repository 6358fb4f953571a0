"""Named retry policies and timeouts for every activity call, in one place."""

from __future__ import annotations

from datetime import timedelta

from temporalio.common import RetryPolicy

# Errors that say the input is wrong: retrying cannot help.
PERMANENT_ERRORS = [
    "gone",
    "package_not_found",
    "image_not_found",
    "command_not_found",
    "runtime_rejected",
    "runtime_unavailable",
    "unhealthy",
    "secrets_key",
]

DATABASE = RetryPolicy(
    initial_interval=timedelta(milliseconds=200),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=10),
    maximum_attempts=20,
    non_retryable_error_types=["gone"],
)

RUNTIME = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=5,
    non_retryable_error_types=PERMANENT_ERRORS,
)

# The health check waits on its own until its deadline; a retry only covers a worker lost mid-check.
HEALTH = RetryPolicy(
    # Soon: a retry follows a lost worker, whose loss the heartbeat timeout already waited for.
    initial_interval=timedelta(milliseconds=200),
    maximum_attempts=3,
    non_retryable_error_types=PERMANENT_ERRORS,
)

# Cleanup after a failure must get through, but never forever.
CLEANUP = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=10,
)

# Builds: a bad recipe, repository or platform fails at once; an unreachable git host or engine is retried.
BUILD_ERRORS = [
    "gone",
    "git_rejected",
    "recipe_invalid",
    "build_failed",
    "platform_unsupported",
    "runtime_rejected",
    "registry_unset",
    "secrets_key",
]
BUILD = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=3,
    non_retryable_error_types=BUILD_ERRORS,
)
GIT = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_attempts=3,
    non_retryable_error_types=BUILD_ERRORS,
)

DB_TIMEOUT = timedelta(seconds=15)
# Runtime activities heartbeat every second; a worker lost mid-activity is noticed after this.
HEARTBEAT = timedelta(seconds=10)
LAUNCH_TIMEOUT = timedelta(minutes=5)
RETIRE_TIMEOUT = timedelta(minutes=5)
# Claiming a host is answered at once by any worker of the shared queue.
CLAIM_TIMEOUT = timedelta(seconds=15)
