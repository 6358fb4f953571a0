"""Credentials in query strings are masked before uvicorn's access log writes them."""

from __future__ import annotations

import io
import logging

import pytest
import uvicorn
from uvicorn.logging import AccessFormatter

from core.accesslog import REDACTED, RedactQueryFilter, install_access_log_redaction, redact_query

KEY = "mcpk_" + "S" * 43


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (f"/mcp/x?api_key={KEY}", f"/mcp/x?api_key={REDACTED}"),
        ("/mcp/x?token=abc&page=2", f"/mcp/x?token={REDACTED}&page=2"),
        ("/mcp/x?key=abc", f"/mcp/x?key={REDACTED}"),
        (
            "/x?apikey=1&access_token=2&client_secret=3&password=4",
            f"/x?apikey={REDACTED}&access_token={REDACTED}&client_secret={REDACTED}&password={REDACTED}",
        ),
        (
            "/x?X-Amz-Signature=ab&X-Amz-Credential=cd&sig=ef",
            f"/x?X-Amz-Signature={REDACTED}&X-Amz-Credential={REDACTED}&sig={REDACTED}",
        ),
        ("/x?API%5FKEY=abc", f"/x?API%5FKEY={REDACTED}"),  # percent-encoded names are recognised
        (f"/x?q={KEY}", f"/x?q={REDACTED}"),  # the platform's keys, under any name
        (f"/x?{KEY}", f"/x?{REDACTED}"),  # or under none
        ("/api/servers?tail=100&event=a,b", "/api/servers?tail=100&event=a,b"),
        ("/api/servers", "/api/servers"),
        ("/x?token", "/x?token"),  # a name without a value carries nothing
        ("/x?", "/x?"),
    ],
)
def test_redact_query(target: str, expected: str) -> None:
    assert redact_query(target) == expected


def _access_record(path_with_query: str) -> logging.LogRecord:
    # Exactly what uvicorn's HTTP protocols log for each request.
    return logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5555", "POST", path_with_query, "1.1", 401),
        None,
    )


def test_filter_keeps_the_shape_uvicorns_access_formatter_needs() -> None:
    record = _access_record(f"/mcp/time?api_key={KEY}&x=1")
    assert RedactQueryFilter().filter(record) is True
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(record)
    assert line == f'127.0.0.1:5555 - "POST /mcp/time?api_key={REDACTED}&x=1 HTTP/1.1" 401 Unauthorized'
    assert KEY not in record.getMessage()


def test_filter_handles_preformatted_messages_and_mappings() -> None:
    plain = logging.LogRecord("x", logging.INFO, __file__, 1, "GET /a?token=zzz", None, None)
    RedactQueryFilter().filter(plain)
    assert plain.getMessage() == f"GET /a?token={REDACTED}"
    mapped = logging.LogRecord("x", logging.INFO, __file__, 1, "%(path)s", ({"path": "/a?secret=zzz"},), None)
    RedactQueryFilter().filter(mapped)
    assert mapped.getMessage() == f"/a?secret={REDACTED}"


def test_installed_filter_survives_uvicorns_logging_setup_and_masks_the_access_log() -> None:
    logger = logging.getLogger("uvicorn.access")
    before = list(logger.filters)
    try:
        install_access_log_redaction()
        install_access_log_redaction()
        assert sum(isinstance(f, RedactQueryFilter) for f in logger.filters) == 1

        async def app(scope: object, receive: object, send: object) -> None:
            pass

        # uvicorn configures logging (dictConfig) when its Config is made, after the app is created.
        uvicorn.Config(app, log_level="info")
        assert any(isinstance(f, RedactQueryFilter) for f in logger.filters)

        stream = io.StringIO()
        handler = logging.StreamHandler(stream)
        handler.setFormatter(AccessFormatter("%(request_line)s %(status_code)s", use_colors=False))
        logger.addHandler(handler)
        try:
            logger.handle(_access_record(f"/mcp/time?token={KEY}"))
        finally:
            logger.removeHandler(handler)
        assert stream.getvalue() == f"POST /mcp/time?token={REDACTED} HTTP/1.1 401 Unauthorized\n"
    finally:
        logger.filters[:] = before
