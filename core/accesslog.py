"""Access-log redaction: credentials in query strings never reach the logs.

uvicorn logs each request's path with its query string. The gateway refuses keys in the URL, but a
client that sends one anyway has already leaked it into whatever reads the access log, unless the
value is masked before the record is written.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import unquote_plus

from core.security import SERVER_KEY_PREFIX, USER_TOKEN_PREFIX

ACCESS_LOGGER = "uvicorn.access"
REDACTED = "[REDACTED]"

# Substrings of parameter names that carry credentials: api_key, apikey, access_token, client_secret,
# password, X-Amz-Signature, X-Amz-Credential ...
_SENSITIVE = re.compile(r"key|token|secret|passw|pwd|signature|credential|session|auth|^sig$|^code$", re.IGNORECASE)


def is_sensitive_name(name: str) -> bool:
    return bool(_SENSITIVE.search(unquote_plus(name).strip()))


def _masked(part: str) -> str:
    name, eq, value = part.partition("=")
    if eq and is_sensitive_name(name):
        return f"{name}={REDACTED}"
    # The platform's own keys are recognisable by their prefix under any name, or under none (`?mcpk_...`).
    if (value if eq else name).startswith((SERVER_KEY_PREFIX, USER_TOKEN_PREFIX)):
        return f"{name}={REDACTED}" if eq else REDACTED
    return part


def redact_query(target: str) -> str:
    """`target` (a path, possibly with a query string) with the values of sensitive parameters masked.
    Everything else is kept byte for byte, so the log still shows what was asked for."""
    path, sep, query = target.partition("?")
    if not sep:
        return target
    return f"{path}?{'&'.join(_masked(part) for part in query.split('&'))}"


class RedactQueryFilter(logging.Filter):
    """Masks credential-looking query parameters in the arguments of a log record.

    uvicorn's access formatter unpacks `record.args` positionally, so the arguments are rewritten in
    place, never merged into the message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) and "?" in a else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact_query(v) if isinstance(v, str) and "?" in v else v for k, v in record.args.items()}
        if isinstance(record.msg, str) and "?" in record.msg and not record.args:
            record.msg = redact_query(record.msg)
        return True


def install_access_log_redaction(logger_name: str = ACCESS_LOGGER) -> None:
    """Idempotent. A filter on the logger survives uvicorn's own logging setup, which replaces the
    logger's handlers but keeps its filters."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, RedactQueryFilter) for f in logger.filters):
        logger.addFilter(RedactQueryFilter())
