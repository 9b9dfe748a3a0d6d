"""The `loradock` command.

The root command lives in the light core; the heavy packages (server/, training/) add their subcommands
through the `loradock.commands` entry points, so this module never imports them and `loradock --help` stays
fast. Each registered module keeps its own torch/vLLM imports inside the command bodies.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import typer

from adapters import __version__
from adapters.commands import register_commands

app = typer.Typer(
    name="loradock",
    help="Serve many LoRA adapters over one base model, and train, evaluate and ship them.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _version(value: bool) -> None:
    if value:
        print(f"loradock {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """loradock: fine-tuned model serving and adapter hub."""


def _register_subcommands() -> None:
    for entry in sorted(entry_points(group="loradock.commands"), key=lambda e: e.name):
        entry.load()(app)


def main() -> None:
    """Entry point of the `loradock` console script."""
    register_commands(app)
    _register_subcommands()
    app()
