"""LoRA supervised fine-tuning with TRL's SFTTrainer, from data file to evaluated, registered adapter.

One readable recipe, top to bottom: set up (base, data, tokens), train (with validation, early stopping and
checkpoints), save (adapter, parity manifest, model card), evaluate (base vs tuned), register (hub).
"""

from __future__ import annotations

import gc
import json
import math
import secrets
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
from training.config import ConfigError, TrainConfig
from training.data.prepare import DataReport, PreparedData, prepare_data
from training.data.tokenize import Encoded, check_stop_token, encode, render_sample
from training.evaluate import evaluate_adapter, native_bf16
from training.model_card import write_manifest, write_model_card
from training.report import write_eval_report

CHECKPOINTS = "checkpoints"


@dataclass
class RunResult:
    run_dir: Path
    adapter_dir: Path
    steps: int
    evaluation: dict[str, Any] | None
    registered: VersionView | None


def run_sft(config: TrainConfig, settings: Settings, console: Console, *, resume: bool = False) -> RunResult:
    """Train one adapter as `config` says; `resume` continues the run folder's last checkpoint."""
    started = time.monotonic()
    # --- set up: base model, run folder, data -------------------------------------------------------------
    base_ref = resolve_base_model(config.base_model, settings.models_dir)
    base_folder = local_model_folder(base_ref)
    base = BaseModelSpec.from_folder(base_folder)
    run_dir = _run_dir(config, settings, resume)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))
    console.rule(f"[bold]loradock train[/bold] {run_dir.name}")
    console.print(Text(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False).rstrip(), style="dim"))

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    prepared = prepare_data(config.data, tokenizer, run_dir)
    _show_report(console, prepared.report)
    train = [encode(tokenizer, example) for example in prepared.splits["train"]]
    validation = [encode(tokenizer, example) for example in prepared.splits["validation"]][: config.eval_samples]
    chat_sample = next((item for item, ex in zip(train, prepared.splits["train"], strict=True) if ex.is_chat), None)
    if chat_sample is not None:
        check_stop_token(tokenizer, chat_sample)
        _show_sample(console, tokenizer, chat_sample)

    parent, start_from = _starting_adapter(config, settings)
    if config.tensorboard:
        _require_tensorboard()

    # --- train ---------------------------------------------------------------------------------------------
    trainer = _trainer(config, base_folder, tokenizer, train, validation, run_dir, start_from)
    checkpoint = resume and any((run_dir / CHECKPOINTS).glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if checkpoint else None)
    steps = trainer.state.global_step

    # --- save ----------------------------------------------------------------------------------------------
    adapter_dir = run_dir / "adapter"
    trainer.model.save_pretrained(adapter_dir)
    write_manifest(
        adapter_dir, base, base_model=config.base_model, run_id=run_dir.name, dataset_sha256=prepared.dataset_sha256
    )
    del trainer
    gc.collect()

    # --- evaluate ------------------------------------------------------------------------------------------
    evaluation = None
    if config.evaluate and prepared.splits["test"]:
        console.print("[bold]evaluating[/bold] base and tuned on the test split (vLLM engine)")
        result = evaluate_adapter(
            str(base_folder),
            adapter_dir,
            tokenizer,
            prepared.splits["test"],
            max_new_tokens=config.eval_max_new_tokens,
            lora_rank=_trained_rank(adapter_dir),
        )
        evaluation = result.to_json()
        summary = {"adapter": config.register_as or run_dir.name, "base_model": config.base_model, "steps": steps}
        report = write_eval_report(run_dir, evaluation, summary)
        _show_evaluation(console, evaluation, report)
    write_model_card(
        adapter_dir,
        name=config.register_as or run_dir.name,
        base_model=config.base_model,
        config=config.model_dump(mode="json"),
        dataset={"dataset_sha256": prepared.dataset_sha256, **prepared.report.to_json()},
        metrics=evaluation,
    )

    # --- register ------------------------------------------------------------------------------------------
    registered = None
    if config.register_as:
        registered = _register(config.register_as, adapter_dir, base, settings, run_dir, prepared, evaluation, parent)
        console.print(f"registered [bold]{registered.ref}[/bold] in the hub")
    record = {
        "run_id": run_dir.name,
        "finished_at": datetime.now(UTC).isoformat(),
        "seconds": round(time.monotonic() - started, 1),
        "steps": steps,
        "adapter": str(adapter_dir),
        "dataset_sha256": prepared.dataset_sha256,
        "parent": parent,
        "registered": registered.ref if registered else None,
        "evaluation": evaluation,
    }
    (run_dir / "run.json").write_text(json.dumps(record, indent=2, default=str))
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


def _bf16(config: TrainConfig) -> bool:
    """bfloat16 autocast where the hardware computes it natively (CUDA, or CPUs with AVX-512 BF16 / AMX)."""
    return native_bf16() if config.bf16 is None else config.bf16


def _trainer(
    config: TrainConfig,
    base_folder: Path,
    tokenizer: Any,
    train: list[Encoded],
    validation: list[Encoded],
    run_dir: Path,
    start_from: Path | None,
) -> Any:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, EarlyStoppingCallback, PrinterCallback
    from trl import SFTConfig, SFTTrainer
    from trl.trainer.callbacks import RichProgressCallback

    from training.callbacks import MetricsLog

    def dataset(items: list[Encoded]) -> Dataset:
        return Dataset.from_list([{"input_ids": item.input_ids, "labels": item.labels} for item in items])

    steps_per_epoch = math.ceil(len(train) / (config.batch_size * config.gradient_accumulation))
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(steps_per_epoch * config.epochs)
    validating = bool(validation)
    patience = config.early_stopping_patience if validating else None
    args = SFTConfig(
        output_dir=str(run_dir / CHECKPOINTS),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler,
        warmup_steps=math.ceil(config.warmup_ratio * total_steps),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        optim="adamw_torch",
        bf16=_bf16(config),
        use_cpu=not torch.cuda.is_available(),
        max_length=config.data.max_seq_len,
        packing=config.packing,
        gradient_checkpointing=config.gradient_checkpointing,
        eval_strategy="steps" if validating else "no",
        eval_steps=config.eval_every,
        save_strategy="steps",
        save_steps=config.save_every,
        save_total_limit=config.save_total_limit,
        load_best_model_at_end=patience is not None,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        logging_steps=max(1, min(10, total_steps // 20)),
        report_to=["tensorboard"] if config.tensorboard else [],
        seed=config.seed,
        data_seed=config.seed,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    model: Any = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    lora: LoraConfig | None = None
    if start_from is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, start_from, is_trainable=True)
    else:
        lora = LoraConfig(
            r=config.lora.r,
            lora_alpha=config.lora.alpha,
            lora_dropout=config.lora.dropout,
            target_modules=config.lora.target_modules,
            use_dora=config.lora.use_dora,
            use_rslora=config.lora.use_rslora,
            task_type="CAUSAL_LM",
        )
    callbacks: list[Any] = [RichProgressCallback(), MetricsLog(run_dir / "metrics.jsonl")]
    if patience is not None:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=patience))
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset(train),
        eval_dataset=dataset(validation) if validating else None,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=callbacks,
    )
    trainer.remove_callback(PrinterCallback)  # the Rich panel and metrics.jsonl already show every log
    return trainer


def _register(
    name: str,
    adapter_dir: Path,
    base: BaseModelSpec,
    settings: Settings,
    run_dir: Path,
    prepared: PreparedData,
    evaluation: dict[str, Any] | None,
    parent: str | None,
) -> VersionView:
    from adapters.hub import Hub
    from adapters.sources import stage_source

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
        return hub.registry.register(name, staged, base, created_by=f"train:{run_dir.name}", metadata=metadata)
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
