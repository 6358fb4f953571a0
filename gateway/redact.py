"""What an opted-in invocation log may keep of arguments and results: secret-looking values replaced,
then cut to a length. Pure functions."""

from __future__ import annotations

import json
import re
from typing import Any

REDACTED = "[redacted]"
SECRET_NAME = re.compile(
    r"pass(word|wd|phrase)?|secret|token|api[-_]?key|apikey|auth|credential|private[-_]?key|cookie|session|signature",
    re.IGNORECASE,
)
SECRET_VALUE = re.compile(
    r"(?:"
    r"\b(?:sk|pk|rk)[-_](?:live[-_]|test[-_]|proj[-_])?[A-Za-z0-9_-]{16,}"  # OpenAI/Stripe style keys
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|\bgithub_pat_[A-Za-z0-9_]{20,}"
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key ids
    r"|\bAIza[0-9A-Za-z_-]{35}"  # Google API keys
    r"|\bmcp[kt]_[A-Za-z0-9_-]{16,}"  # this platform's keys and tokens
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
    r"|(?i:bearer|basic)\s+[A-Za-z0-9._~+/=-]{16,}"
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)"
    r")"
)


def redact(value: Any, depth: int = 0) -> Any:
    """The same JSON value with secret-named fields and secret-looking strings replaced."""
    if depth > 32:
        return REDACTED
    if isinstance(value, dict):
        return {
            k: (
                REDACTED
                if isinstance(k, str) and SECRET_NAME.search(k) and v not in (None, "")
                else redact(v, depth + 1)
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v, depth + 1) for v in value]
    if isinstance(value, str):
        return SECRET_VALUE.sub(REDACTED, value)
    return value


def excerpt(value: Any, limit: int) -> str:
    """Redacted JSON text of `value`, at most `limit` characters (cut ones say how much is missing)."""
    text = json.dumps(redact(value), ensure_ascii=False, separators=(",", ":"))
    if len(text) <= limit:
        return text
    marker = f"...[{len(text) - limit} more characters]"
    return text[: max(0, limit - len(marker))] + marker


def response_message(body: bytes) -> Any:
    """The JSON-RPC message a response carried: a JSON body, or the last message event of an SSE stream."""
    stripped = body.lstrip()
    if stripped[:1] in (b"{", b"["):
        try:
            return json.loads(stripped)
        except ValueError:
            return None
    found = None
    for event in body.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:"))
        if data:
            try:
                message = json.loads(data)
            except ValueError:
                continue
            if isinstance(message, dict) and ("result" in message or "error" in message):
                found = message
    return found
