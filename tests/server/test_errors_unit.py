"""The error mapping on its own: pure logic, on a small app with routes that raise."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.errors import (
    ContextLengthExceededError,
    ModelNotFoundError,
    ServerOverloadedError,
    _param_from_location,
    install_error_handlers,
)


def make_client() -> TestClient:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret internal detail in /srv/app.py line 3")

    @app.get("/missing")
    def missing() -> None:
        raise ModelNotFoundError("ghost")

    @app.get("/busy")
    def busy() -> None:
        raise ServerOverloadedError("full")

    @app.get("/long")
    def long() -> None:
        raise ContextLengthExceededError("too long", param="messages")

    return TestClient(app, raise_server_exceptions=False)


def test_unexpected_error_is_500_without_details() -> None:
    response = make_client().get("/boom")
    assert response.status_code == 500
    assert response.json() == {
        "error": {
            "message": "The server had an error while processing your request.",
            "type": "server_error",
            "param": None,
            "code": None,
        }
    }
    assert "secret" not in response.text and "Traceback" not in response.text


def test_api_errors_keep_status_type_param_and_code() -> None:
    client = make_client()
    missing = client.get("/missing")
    assert missing.status_code == 404
    assert missing.json()["error"]["param"] == "model"
    assert missing.json()["error"]["code"] == "model_not_found"
    busy = client.get("/busy")
    assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
    long = client.get("/long")
    assert long.status_code == 400 and long.json()["error"]["code"] == "context_length_exceeded"


def test_param_names_drop_body_and_union_tags() -> None:
    assert _param_from_location(("body", "messages", 0, "content")) == "messages.0.content"
    assert _param_from_location(("body", "prompt", "list[int]", 0)) == "prompt.0"
    assert _param_from_location(("body", "stop", "str")) == "stop"
    assert _param_from_location(("body",)) is None
