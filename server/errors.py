"""Our exception types and the one place that turns exceptions into OpenAI-shaped error responses.

Handlers map exception *types* to statuses (as vLLM's server does), never message text, and nothing
unexpected leaks a stack trace into a response body: it is logged here and answered with a plain 500.
"""

from __future__ import annotations

import errno
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapters.errors import (
    ConflictError,
    GoneError,
    HubError,
    InvalidAdapterError,
    InvalidInputError,
    InvalidNameError,
    NotFoundError,
    SourceError,
    TooLargeError,
)

logger = logging.getLogger(__name__)


class ApiError(Exception):
    """An error a client caused or should know about; carries OpenAI's error fields."""

    status_code = 400
    error_type = "invalid_request_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str] | None:
        return None


class InvalidRequestError(ApiError):
    """A parameter has a value we cannot honour; `param` names it."""

    code = "invalid_value"


class ContextLengthExceededError(ApiError):
    code = "context_length_exceeded"


class ModelNotFoundError(ApiError):
    status_code = 404
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.", param="model")


class PayloadTooLargeError(ApiError):
    status_code = 413
    code = "too_large"


class IncompatibleModelError(ApiError):
    """An adapter was trained with a chat template or tokenizer other than the served base's."""

    status_code = 409
    code = "model_incompatible"


class ModelGoneError(ApiError):
    status_code = 410
    code = "model_deprecated"


class AuthenticationError(ApiError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class BrowserAuthenticationError(AuthenticationError):
    """401 that asks a browser for the key (HTTP Basic: any user name, the API key as password)."""

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="loradock", charset="UTF-8"'}


class PermissionDeniedError(ApiError):
    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class AdapterLoadError(ApiError):
    """The engine could not load a registered adapter's files."""

    status_code = 500
    error_type = "server_error"
    code = "adapter_load_failed"


class ServiceUnavailableError(ApiError):
    """The server cannot take the request now (engine starting, overloaded, draining); clients may retry."""

    status_code = 503
    error_type = "server_error"
    retry_after_s = 1

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class ServerOverloadedError(ServiceUnavailableError):
    code = "server_overloaded"


class DatabaseUnavailableError(ServiceUnavailableError):
    """The hub's database cannot be reached: ops calls fail fast, inference of resolved adapters goes on."""

    code = "database_unavailable"
    retry_after_s = 5


class RateLimitedError(ApiError):
    """A key went over its request rate or its concurrent requests; `retry_after_s` says when to come back."""

    status_code = 429
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after_s: int, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class StorageFullError(ApiError):
    """The disk refused a write (full, over quota, or over the file size limit); what was written is removed."""

    status_code = 507
    error_type = "server_error"
    code = "insufficient_storage"


class EngineNotReadyError(ServiceUnavailableError):
    code = "engine_not_ready"
    retry_after_s = 5


# Hub errors (adapters/ knows nothing of HTTP) by type: status, OpenAI error type, code.
_HUB_ERRORS: list[tuple[type[HubError], int, str, str]] = [
    (TooLargeError, 413, "invalid_request_error", "too_large"),
    (InvalidAdapterError, 400, "invalid_request_error", "invalid_adapter"),
    (InvalidNameError, 400, "invalid_request_error", "invalid_name"),
    (NotFoundError, 404, "not_found_error", "not_found"),
    (GoneError, 410, "invalid_request_error", "deprecated"),
    (ConflictError, 409, "invalid_request_error", "conflict"),
    (SourceError, 400, "invalid_request_error", "source_unavailable"),
    (InvalidInputError, 400, "invalid_request_error", "invalid_value"),
]


def error_body(message: str, error_type: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    """OpenAI's error envelope."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def _count(request: Request, status: int, code: str | None) -> None:
    """Every error response is counted here, labelled by the model a route resolved (if it got that far)."""
    state = getattr(request.app.state, "loradock", None)
    if state is not None:
        model = getattr(request.state, "model_label", "none")
        state.metrics.errors.labels(model, str(status), code or "none").inc()


def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    _count(request, exc.status_code, exc.code)
    return JSONResponse(
        error_body(exc.message, exc.error_type, param=exc.param, code=exc.code),
        status_code=exc.status_code,
        headers=exc.headers(),
    )


def _hub_error(request: Request, exc: Exception) -> JSONResponse:
    for error_class, status, error_type, code in _HUB_ERRORS:
        if isinstance(exc, error_class):
            _count(request, status, code)
            return JSONResponse(error_body(str(exc), error_type, code=code), status_code=status)
    return _unexpected_error(request, exc)


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    _count(request, 400, "invalid_value")
    first = exc.errors()[0]
    param = _param_from_location(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        message = "The request body is not valid JSON."
    elif param:
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid')}."
    else:
        message = f"Invalid request: {first.get('msg', 'invalid')}."
    return JSONResponse(error_body(message, "invalid_request_error", param=param, code="invalid_value"), 400)


_UNION_TAGS = frozenset({"str", "int", "float", "bool", "dict", "list", "none"})


def _param_from_location(location: tuple[Any, ...]) -> str | None:
    """`messages.0.content` from pydantic's location, without "body" and the union-member tags pydantic adds
    (`prompt.list[int].0` names the same parameter as `prompt.0`)."""
    parts = [
        str(part)
        for part in location
        if part != "body" and not (isinstance(part, str) and (part in _UNION_TAGS or "[" in part or "-" in part))
    ]
    return ".".join(parts) or None


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    full = storage_error(exc)  # FastAPI answers 400 when writing an uploaded form's file fails: say why instead
    if full is not None:
        return _os_error(request, exc)
    code = "too_large" if exc.status_code == 413 else None
    _count(request, exc.status_code, code)
    error_type = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return JSONResponse(
        error_body(str(exc.detail), error_type, code=code),
        status_code=exc.status_code,
        headers=getattr(exc, "headers", None),
    )


STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def storage_error(exc: BaseException) -> StorageFullError | None:
    """The 507 for a write the file system refused, wherever in the chain of causes the OSError sits."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, OSError) and current.errno in STORAGE_ERRNOS:
            return StorageFullError(
                f"The server's storage refused the write ({current.strerror}); nothing was kept. "
                "Ask the operator to free space, then retry."
            )
        current = current.__cause__ or current.__context__
    return None


UNREACHABLE_SQLSTATES = ("08", "57P", "53300", "55000")
"""PostgreSQL's codes for a database that cannot be reached: connection exceptions (08), the server shutting down
or starting (57P01-57P03), too many connections (53300), and a database that refuses connections (55000)."""


def database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` means the database cannot be reached (down, refusing connections, the pool exhausted), as
    opposed to a statement it refused: only those are answered with 503 or waited out; the rest are bugs.

    SQLite is a local file: its errors are never an outage.
    """
    if isinstance(exc, PoolTimeoutError):
        return True
    if not isinstance(exc, DBAPIError) or type(exc.orig).__module__.startswith("sqlite3"):
        return False
    if exc.connection_invalidated:
        return True
    sqlstate = getattr(exc.orig, "sqlstate", None)
    if sqlstate is None:  # libpq failed before the server answered: refused, timed out, unresolvable
        return isinstance(exc, OperationalError)
    return str(sqlstate).startswith(UNREACHABLE_SQLSTATES)


def _database_error(request: Request, exc: Exception) -> JSONResponse:
    if not database_unavailable(exc):
        return _unexpected_error(request, exc)
    logger.warning("database unavailable on %s %s: %s", request.method, request.url.path, getattr(exc, "orig", exc))
    return _api_error(request, DatabaseUnavailableError("The hub's database is unavailable; retry shortly."))


def _os_error(request: Request, exc: Exception) -> JSONResponse:
    full = storage_error(exc)
    if full is None:
        return _unexpected_error(request, exc)
    logger.error("storage refused a write on %s %s: %s", request.method, request.url.path, exc)
    return _api_error(request, full)


def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    _count(request, 500, "internal_error")
    return JSONResponse(error_body("The server had an error while processing your request.", "server_error"), 500)


def install_error_handlers(app: FastAPI) -> None:
    """Register every mapping above on `app`."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(HubError, _hub_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeoutError, _database_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(Exception, _unexpected_error)
