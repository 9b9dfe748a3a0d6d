"""Keys never reach a log line: a filter on every handler masks loradock keys and the bootstrap admin key.

Nothing in loradock logs a header on purpose; this is the guard for what it does not control: uvicorn's access
log prints query strings (a client that put its key in the URL), and exception messages may quote request data.
"""

from __future__ import annotations

import logging
import re

from adapters.keys import KEY_PREFIX

MASK = "[REDACTED]"
KEY_PATTERN = re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_\-]{8,}")
SERVER_LOGGERS = ("", "uvicorn", "uvicorn.access", "uvicorn.error")


class SecretFilter(logging.Filter):
    """Masks the message template and each argument in place, keeping `args` a tuple: formatters that unpack it
    (uvicorn's access log reads client, method, path, version and status from it) go on working."""

    def __init__(self, extra_secrets: list[str]) -> None:
        super().__init__()
        self._extra = [secret for secret in extra_secrets if secret]

    def mask(self, text: str) -> str:
        text = KEY_PATTERN.sub(KEY_PREFIX + MASK, text)
        for secret in self._extra:
            text = text.replace(secret, MASK)
        return text

    def _masked(self, value: object) -> object:
        if isinstance(value, str):
            return self.mask(value)
        if isinstance(value, int | float | bool) or value is None:
            return value
        text = str(value)
        masked = self.mask(text)
        return value if masked == text else masked

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = self.mask(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(self._masked(arg) for arg in record.args)
        elif isinstance(record.args, dict):
            record.args = {key: self._masked(arg) for key, arg in record.args.items()}
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        return True


def mask_secrets_in_logs(extra_secrets: list[str]) -> None:
    """Attach the filter to every handler of the server's loggers (call after uvicorn configured logging)."""
    secret_filter = SecretFilter(extra_secrets)
    for name in SERVER_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            handler.addFilter(secret_filter)
