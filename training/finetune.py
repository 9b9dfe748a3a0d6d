"""The fine-tuning recipe, from data file to evaluated, registered LoRA adapter (SFT or DPO).

One readable recipe, top to bottom: set up (base, data, tokens), train (TRL's SFT or DPO trainer, with
validation, early stopping and checkpoints), save (adapter, parity manifest, model card), evaluate (base vs tuned),
register (hub). The method-specific trainer set-up lives in `training/sft.py` and `training/dpo.py`.
"""

from __future__ import annotations

import gc
import json
import secrets
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table
from rich.text import Text

from adapters.base_models import local_model_folder, resolve_base_model
from adapters.fingerprint import BaseModelSpec
from adapters.records import VersionView
from adapters.settings import Settings
from adapters.store import fsync_dir, fsync_tree, write_atomic
from training.config import ConfigError, TrainConfig
from training.data.prepare import DataReport, PreparedData, prepare_data
from training.data.tokenize import Encoded, check_stop_token, encode, render_sample
from training.dpo import dpo_trainer
from training.evaluate import evaluate_adapter
from training.model_card import write_manifest, write_model_card
from training.report import write_eval_report
from training.result_cache import ResultCache
from training.sft import sft_trainer
from training.trainer_args import CHECKPOINTS


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path
    steps: int
    evaluation: dict[str, Any] | None
    registered: VersionView | None


def run_finetune(config: TrainConfig, settings: Settings, console: Console, *, resume: bool = False) -> RunResult:
    """Train one adapter as `config` says; `resume` continues the run folder's last checkpoint."""
    started = time.monotonic()
    # --- set up: base model, run folder, data -------------------------------------------------------------
    base_ref = resolve_base_model(config.base_model, settings.models_dir)
    base_folder = local_model_folder(base_ref)
    base = BaseModelSpec.from_folder(base_folder)
    run_dir = _run_dir(config, settings, resume)
    write_atomic(run_dir / "config.yaml", yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    console.rule(f"[bold]loradock train[/bold] {run_dir.name}")
    console.print(Text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip(), style="dim"))

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    prepared = prepare_data(config.data, tokenizer, run_dir)
    _show_report(console, prepared.report)
    train_examples = prepared.splits["train"]
    validation_examples = prepared.splits["validation"][: config.eval_samples]
    sample = next((encode(tokenizer, example) for example in train_examples if example.is_chat), None)
    if sample is not None:
        check_stop_token(tokenizer, sample)
        _show_sample(console, tokenizer, sample)

    parent, start_from = _starting_adapter(config, settings)
    if config.tensorboard:
        _require_tensorboard()

    # --- train ---------------------------------------------------------------------------------------------
    if config.method == "dpo":
        trainer = dpo_trainer(config, base_folder, tokenizer, train_examples, validation_examples, run_dir, start_from)
    else:
        trainer = sft_trainer(config, base_folder, tokenizer, train_examples, validation_examples, run_dir, start_from)
    checkpoint = _last_complete_checkpoint(run_dir / CHECKPOINTS) if resume else None
    trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    steps = trainer.state.global_step
    trained_tokens = int(trainer.state.num_input_tokens_seen or 0)

    # --- save ----------------------------------------------------------------------------------------------
    # Assembled under a temporary name and renamed once the model card is in: `adapter/` is always complete.
    adapter_dir = run_dir / "adapter"
    partial = run_dir / ".adapter.partial"
    shutil.rmtree(partial, ignore_errors=True)  # an earlier attempt's, killed while saving
    trainer.model.save_pretrained(partial)
    write_manifest(
        partial, base, base_model=config.base_model, run_id=run_dir.name, dataset_sha256=prepared.dataset_sha256
    )
    del trainer
    gc.collect()

    # --- evaluate ------------------------------------------------------------------------------------------
    evaluation = None
    if config.evaluate and prepared.splits["test"]:
        console.print("[bold]evaluating[/bold] base and tuned on the test split (vLLM engine)")
        result = evaluate_adapter(
            str(base_folder),
            partial,
            tokenizer,
            prepared.splits["test"],
            max_new_tokens=config.eval_max_new_tokens,
            lora_rank=_trained_rank(partial),
            cache=ResultCache(settings.cache_dir / "answers"),
        )
        evaluation = result.to_json()
        summary = {"adapter": config.register_as or run_dir.name, "base_model": config.base_model, "steps": steps}
        report = write_eval_report(run_dir, evaluation, summary)
        _show_evaluation(console, evaluation, report)
    write_model_card(
        partial,
        name=config.register_as or run_dir.name,
        base_model=config.base_model,
        config=config.model_dump(mode="json"),
        dataset={"dataset_sha256": prepared.dataset_sha256, **prepared.report.to_json()},
        metrics=evaluation,
    )
    _publish(partial, adapter_dir)

    # --- register ------------------------------------------------------------------------------------------
    registered = None
    if config.register_as:
        registered = _register(
            config.register_as, adapter_dir, base, settings, run_dir, prepared, evaluation, parent, config.owner_tenant
        )
        console.print(f"registered [bold]{registered.ref}[/bold] in the hub")
    record = {
        "run_id": run_dir.name,
        "finished_at": datetime.now(UTC).isoformat(),
        "seconds": round(time.monotonic() - started, 1),
        "steps": steps,
        "trained_tokens": trained_tokens,
        "adapter": str(adapter_dir),
        "dataset_sha256": prepared.dataset_sha256,
        "parent": parent,
        "registered": registered.ref if registered else None,
        "evaluation": evaluation,
    }
    write_atomic(run_dir / "run.json", json.dumps(record, indent=2, default=str))
    return RunResult(run_dir, adapter_dir, steps, evaluation, registered)


def _run_dir(config: TrainConfig, settings: Settings, resume: bool) -> Path:
    if config.output_dir:
        run_dir = Path(config.output_dir).expanduser().resolve()
    else:
        if resume:
            raise ConfigError("--resume needs the run folder: pass --output-dir of the run to continue")
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        run_dir = settings.home / "runs" / f"run-{stamp}-{secrets.token_hex(2)}"
    if resume and not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"--resume: {run_dir} is not a run folder (it has no config.yaml)")
    if not resume and (run_dir / "adapter").exists():
        raise ConfigError(f"{run_dir} already holds a finished run; choose another --output-dir or --resume it")
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def _last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint the Trainer finished writing; the unfinished ones of a killed run are deleted.

    The Trainer writes a checkpoint's files in place and trainer_state.json last, and `resume_from_checkpoint=True`
    would pick the highest-numbered folder even if a kill -9 cut its writing short.
    """
    complete = None
    for checkpoint in sorted(folder.glob("checkpoint-*"), key=_step_of):
        try:
            json.loads((checkpoint / "trainer_state.json").read_text())
            complete = checkpoint
        except (OSError, ValueError):
            shutil.rmtree(checkpoint, ignore_errors=True)
    return complete


def _step_of(checkpoint: Path) -> int:
    number = checkpoint.name.rsplit("-", 1)[-1]
    return int(number) if number.isdigit() else -1


def _publish(partial: Path, adapter_dir: Path) -> None:
    """Move the finished adapter into place; a resumed run's earlier copy is moved aside first and deleted."""
    fsync_tree(partial)
    if adapter_dir.exists():
        previous = adapter_dir.with_name(f".adapter.old-{secrets.token_hex(4)}")
        adapter_dir.rename(previous)
        partial.rename(adapter_dir)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        partial.rename(adapter_dir)
    fsync_dir(adapter_dir.parent)


def _starting_adapter(config: TrainConfig, settings: Settings) -> tuple[str | None, Path | None]:
    """(parent reference for lineage, adapter folder to continue from) for `init_from`, or (None, None)."""
    if not config.init_from:
        return None, None
    folder = Path(config.init_from).expanduser()
    if folder.is_dir():
        if not (folder / "adapter_config.json").is_file():
            raise ConfigError(f"init_from: {folder} is not an adapter folder (no adapter_config.json)")
        return str(folder.resolve()), folder
    name, at, number = config.init_from.partition("@")
    if not at or not number.isdigit():
        raise ConfigError(f"init_from: {config.init_from!r} is neither an adapter folder nor NAME@VERSION")
    from adapters.hub import Hub

    hub = Hub.open(settings)
    try:
        version = hub.registry.get_version(name, int(number))
        folder = hub.store.path(version.sha256)
    finally:
        hub.close()
    if not folder.is_dir():
        raise ConfigError(f"init_from: the files of {version.ref} were purged")
    return version.ref, folder


def _trained_rank(adapter_dir: Path) -> int:
    return int(json.loads((adapter_dir / "adapter_config.json").read_text())["r"])


def _require_tensorboard() -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError as exc:
        raise ConfigError("tensorboard: true needs the tensorboard package (pip install tensorboard)") from exc


def _register(
    name: str,
    adapter_dir: Path,
    base: BaseModelSpec,
    settings: Settings,
    run_dir: Path,
    prepared: PreparedData,
    evaluation: dict[str, Any] | None,
    parent: str | None,
    tenant: str | None,
) -> VersionView:
    from adapters.drift.profile import examples_reference
    from adapters.hub import Hub
    from adapters.sources import stage_source
    from training.profiling import profile_training_data

    hub = Hub.open(settings)
    try:
        staged = stage_source(hub.store, str(adapter_dir), hub.registry.limits, kind="training")
        metadata: dict[str, Any] = {
            "run_id": run_dir.name,
            "run_dir": str(run_dir),
            "dataset_sha256": prepared.dataset_sha256,
            "splits": prepared.report.splits,
            "parent": parent,
        }
        if evaluation is not None:
            main = evaluation["main_metric"]
            metadata["metrics"] = {
                "main": main,
                "base": evaluation["base"]["task"].get(main),
                "tuned": evaluation["tuned"]["task"].get(main),
                "test_loss": evaluation["tuned"]["loss"],
            }
        version = hub.registry.register(
            name, staged, base, created_by=f"train:{run_dir.name}", metadata=metadata, tenant=tenant
        )
        prompts, answers = examples_reference(prepared.splits["train"])
        profile_training_data(hub, version, prompts, answers, f"train:{run_dir.name}")
        return version
    finally:
        hub.close()


def _show_report(console: Console, report: DataReport) -> None:
    table = Table(title="data validation", show_header=False)
    table.add_row("shape", report.shape)
    table.add_row("rows read", str(report.rows_read))
    table.add_row("refused", str(len(report.refused)))
    table.add_row("empty / over-long", f"{report.empty} / {report.too_long}")
    table.add_row("duplicates (exact / near)", f"{report.exact_duplicates} / {report.near_duplicates}")
    table.add_row("test rows leaking from train (removed)", str(report.leaked_from_train))
    table.add_row("token lengths", ", ".join(f"{k} {v}" for k, v in report.token_lengths.items()))
    table.add_row("splits", ", ".join(f"{k} {v}" for k, v in report.splits.items()))
    console.print(table)
    for path, refusal in report.refused[:10]:
        console.print(f"[yellow]refused[/yellow] {path}:{refusal.line}: {refusal.reason}")


def _show_sample(console: Console, tokenizer: Any, sample: Encoded) -> None:
    text = Text()
    for piece, supervised in render_sample(tokenizer, sample):
        text.append(piece, style="bold green" if supervised else "dim")
    console.print("[bold]one training example[/bold] (green: tokens with loss, including the end-of-turn token)")
    console.print(text)


def _show_evaluation(console: Console, evaluation: dict[str, Any], report: Path) -> None:
    table = Table("metric", "base", "tuned", title="test split")
    for key, value in evaluation["tuned"]["task"].items():
        if isinstance(value, float):
            table.add_row(key, f"{evaluation['base']['task'].get(key, 0):.3f}", f"{value:.3f}")
    table.add_row("loss", f"{evaluation['base']['loss']:.4f}", f"{evaluation['tuned']['loss']:.4f}")
    table.add_row(
        "general-text perplexity",
        f"{evaluation['base']['probe_perplexity']:.2f}",
        f"{evaluation['tuned']['probe_perplexity']:.2f}",
    )
    console.print(table)
    console.print(f"report: {report}")
