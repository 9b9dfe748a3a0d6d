"""The OpenAPI document as clients see the API: every error in OpenAI's envelope, under the statuses we send.

FastAPI documents its own 422 validation error, which loradock never sends (bad input is a 400 in OpenAI's
shape, server/errors.py); generated clients and schema fuzzers (schemathesis) read the document, so it has to
say what the server really answers.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

ERROR_RESPONSES = {
    "4XX": "The request was refused: invalid, unauthorized, not found, too large, or over a limit (429).",
    "5XX": "The server could not answer: the engine is loading or stopped, the database is down (503), full disk.",
}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope."""

    error: ErrorDetail


def document_errors(app: FastAPI) -> None:
    """Make `app.openapi()` describe our error responses instead of FastAPI's 422."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes, description=app.description
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")["$defs"])
        components["ErrorResponse"] = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components["ErrorResponse"].pop("$defs", None)
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}
        for operations in schema["paths"].values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                responses.pop("422", None)
                for status, description in ERROR_RESPONSES.items():
                    responses.setdefault(status, {"description": description, "content": error})
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to customize the schema
