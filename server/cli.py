"""`loradock serve`: the OpenAI-compatible server on uvicorn."""

from __future__ import annotations

import gc
import logging
import os
import socket
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

console = Console(stderr=True, soft_wrap=True)


def serve(
    base_model: str | None = typer.Option(
        None, "--base-model", help="Folder, name under $LORADOCK_HOME/models, or Hugging Face id."
    ),
    adapter: list[str] = typer.Option(  # noqa: B008 - Typer reads the default from here
        [], "--adapter", help="Register a LoRA adapter folder as NAME=PATH in the hub and serve it (repeatable)."
    ),
    host: str | None = typer.Option(None, help="Address to bind [default: LORADOCK_HOST or 127.0.0.1]."),
    port: int | None = typer.Option(None, help="Port to bind [default: LORADOCK_PORT or 8000]."),
    served_model_name: str | None = typer.Option(None, help="Name clients use for the base model."),
    remote_engine: list[str] = typer.Option(  # noqa: B008 - Typer reads the default from here
        [],
        "--remote-engine",
        help="URL of a vLLM OpenAI server to front instead of running vLLM here (repeatable; it must see the "
        "artifact store at the same path) [default: LORADOCK_REMOTE_ENGINES].",
    ),
) -> None:
    """Serve the base model and its adapters over an OpenAI-compatible API (vLLM in-process, or the vLLM servers
    given with --remote-engine)."""
    start_without_collector()
    import uvicorn
    from pydantic import ValidationError

    from adapters.errors import HubError
    from adapters.settings import Settings
    from server.app import build_app, build_state
    from server.engine_process import start_forkserver
    from server.log_secrets import mask_secrets_in_logs

    overrides: dict[str, Any] = {
        "base_model": base_model,
        "host": host,
        "port": port,
        "served_model_name": served_model_name,
        "remote_engines": remote_engine or None,
    }
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per request to the remote engines otherwise
    try:
        settings = Settings(**{key: value for key, value in overrides.items() if value is not None})
        static_adapters = _parse_adapters(adapter)
        listener = _listen(settings.host, settings.port)  # before the hub is opened and `--adapter` registered
        state = build_state(settings, static_adapters)
    except (HubError, FileNotFoundError, ValidationError, typer.BadParameter) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc
    # Once the model, adapters and hub are known to be good (a refusal exits at once, not when the forkserver's
    # imports are done), and before the engine's: the forkserver imports vLLM's engine core on the other core meanwhile.
    start_forkserver(settings)

    fatal: list[str] = []
    config = uvicorn.Config(
        build_app(state, on_fatal=lambda reason: _stop(server, fatal, reason)),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=int(settings.graceful_shutdown_s),
        log_level="info",
    )
    server = uvicorn.Server(config)
    mask_secrets_in_logs([settings.admin_key.get_secret_value()] if settings.admin_key else [])
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    port = listener.getsockname()[1]  # the one the system chose, for --port 0
    logging.getLogger(__name__).info("listening on http://%s:%d (Ctrl-C stops the server)", shown_host, port)
    server.run(sockets=[listener])
    if fatal:
        console.print(f"[red]error:[/red] {fatal[0]}")
        raise typer.Exit(1)


def start_without_collector() -> None:
    """Run imports and the engine's start without the garbage collector; server.app.freeze_startup_heap makes one
    full pass and turns it back on once the engine is up. An engine process forked from this one meanwhile (vLLM
    may fork on CUDA) collects as usual, as does the engine core forked from the forkserver (server/engine_process.py),
    a process of its own that never turned the collector off."""
    gc.disable()
    os.register_at_fork(after_in_child=gc.enable)


def _stop(server: Any, fatal: list[str], reason: str) -> None:
    if server.should_exit:  # already stopping (Ctrl-C reaches the engine's processes too): not a failure
        return
    fatal.append(reason)
    server.should_exit = True


def _listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything else starts. uvicorn binds its own only after the app's startup,
    and by then the engine is loading in a thread that nothing can stop: a taken port left the process, and an engine
    core with the model's gigabytes, running until the engine was up. uvicorn's own `Config.bind_socket` exits the
    process when the port is taken; this refuses it as the other bad arguments are, with the address named. (Given
    its sockets, uvicorn leaves the "running on" line to its caller.)"""
    ipv6 = ":" in host  # as uvicorn tells the families apart; "::" takes IPv4 connections too, as it does there
    try:
        return socket.create_server(
            (host, port),
            family=socket.AF_INET6 if ipv6 else socket.AF_INET,
            dualstack_ipv6=ipv6 and socket.has_dualstack_ipv6(),
        )
    except OSError as exc:
        raise typer.BadParameter(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc


def _parse_adapters(specs: list[str]) -> dict[str, Path]:
    adapters: dict[str, Path] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise typer.BadParameter(f"--adapter takes NAME=PATH, got {spec!r}")
        if name in adapters:
            raise typer.BadParameter(f"--adapter {name} is given twice")
        adapters[name] = Path(path).expanduser()
    return adapters


def register(app: typer.Typer) -> None:
    """Add the server's commands to the root `loradock` command."""
    app.command()(serve)
