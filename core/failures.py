"""Failures of the adapters below activities: runtimes (where servers run) and builds (where images come
from) raise them alike, and activities turn each into an ApplicationError of its `kind`."""

from __future__ import annotations


class RuntimeFailure(Exception):
    """A failure of the runtime. `permanent` ones will fail the same way on retry (bad input)."""

    kind = "runtime_error"
    permanent = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PermanentFailure(RuntimeFailure):
    kind = "runtime_rejected"
    permanent = True


class PackageNotFound(PermanentFailure):
    kind = "package_not_found"


class ImageNotFound(PermanentFailure):
    kind = "image_not_found"


class CommandNotFound(PermanentFailure):
    kind = "command_not_found"
