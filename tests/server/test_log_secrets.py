"""The log filter that keeps keys out of every log line."""

from __future__ import annotations

import logging
import sys

from server.log_secrets import SecretFilter


def _record(message: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, message, args, None)


def test_loradock_keys_and_the_bootstrap_key_are_masked() -> None:
    secret_filter = SecretFilter(["bootstrap-admin-secret"])
    record = _record('%s - "GET /v1/models?api_key=%s HTTP/1.1" 200', "127.0.0.1", "ldk-AbC_d-123456789xyz")
    assert secret_filter.filter(record)
    assert isinstance(record.args, tuple) and len(record.args) == 2
    assert record.getMessage() == '127.0.0.1 - "GET /v1/models?api_key=ldk-[REDACTED] HTTP/1.1" 200'
    plain = _record("admin key bootstrap-admin-secret rejected")
    secret_filter.filter(plain)
    assert plain.getMessage() == "admin key [REDACTED] rejected"


def test_keys_inside_a_logged_exception_are_masked() -> None:
    try:
        raise ValueError("bad key ldk-0123456789abcdef")
    except ValueError:
        record = logging.LogRecord("server", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    SecretFilter([]).filter(record)
    assert record.exc_text is not None
    assert "ldk-0123456789abcdef" not in record.exc_text and "ldk-[REDACTED]" in record.exc_text


def test_ordinary_messages_are_left_alone() -> None:
    record = _record("loaded %d adapters", 3)
    SecretFilter([]).filter(record)
    assert record.msg == "loaded %d adapters" and record.args == (3,)
    assert record.getMessage() == "loaded 3 adapters"


def test_uvicorn_access_lines_with_a_key_in_the_query_still_format() -> None:
    """uvicorn's access formatter unpacks the record's args: masking must keep them a five-tuple."""
    from uvicorn.logging import AccessFormatter

    record = _record(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", "/v1/models?api_key=ldk-secret0123456", "1.1", 200
    )
    SecretFilter([]).filter(record)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False).format(record)
    assert line == '127.0.0.1:5000 - "GET /v1/models?api_key=ldk-[REDACTED] HTTP/1.1" 200 OK'
