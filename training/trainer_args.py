"""What the SFT and DPO trainers share: optimizer, schedule, checkpoints, validation, callbacks, the LoRA."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from training.config import TrainConfig
from training.evaluate import native_bf16

CHECKPOINTS = "checkpoints"


def common_arguments(config: TrainConfig, run_dir: Path, train_rows: int, validating: bool) -> dict[str, Any]:
    """Keyword arguments for SFTConfig or DPOConfig (both are transformers TrainingArguments)."""
    import torch

    steps_per_epoch = math.ceil(train_rows / (config.batch_size * config.gradient_accumulation))
    total_steps = config.max_steps if config.max_steps > 0 else math.ceil(steps_per_epoch * config.epochs)
    patience = config.early_stopping_patience if validating else None
    return {
        "output_dir": str(run_dir / CHECKPOINTS),
        "per_device_train_batch_size": config.batch_size,
        "per_device_eval_batch_size": config.batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation,
        "num_train_epochs": config.epochs,
        "max_steps": config.max_steps,
        "learning_rate": config.learning_rate,
        "lr_scheduler_type": config.lr_scheduler,
        "warmup_steps": math.ceil(config.warmup_ratio * total_steps),
        "weight_decay": config.weight_decay,
        "max_grad_norm": config.max_grad_norm,
        "optim": "adamw_torch",
        "bf16": native_bf16() if config.bf16 is None else config.bf16,
        "use_cpu": not torch.cuda.is_available(),
        "max_length": config.data.max_seq_len,
        "gradient_checkpointing": config.gradient_checkpointing,
        "eval_strategy": "steps" if validating else "no",
        "eval_steps": config.eval_every,
        "save_strategy": "steps",
        "save_steps": config.save_every,
        "save_total_limit": config.save_total_limit,
        "load_best_model_at_end": patience is not None,
        "metric_for_best_model": "eval_loss",
        "greater_is_better": False,
        "logging_steps": max(1, min(10, total_steps // 20)),
        "report_to": ["tensorboard"] if config.tensorboard else [],
        "seed": config.seed,
        "data_seed": config.seed,
        "dataloader_num_workers": 0,
        "disable_tqdm": True,
        "include_num_input_tokens_seen": True,
    }


def callbacks(config: TrainConfig, run_dir: Path, validating: bool) -> list[Any]:
    from transformers import EarlyStoppingCallback
    from trl.trainer.callbacks import RichProgressCallback

    from training.callbacks import MetricsLog

    chosen: list[Any] = [RichProgressCallback(), MetricsLog(run_dir / "metrics.jsonl")]
    if validating and config.early_stopping_patience is not None:
        chosen.append(EarlyStoppingCallback(early_stopping_patience=config.early_stopping_patience))
    return chosen


def model_and_lora(config: TrainConfig, base_folder: Path, start_from: Path | None) -> tuple[Any, Any]:
    """The base model, and either a fresh LoRA config or (continuing an adapter) the model with it loaded."""
    import torch
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM

    model: Any = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    if start_from is not None:
        return PeftModel.from_pretrained(model, start_from, is_trainable=True), None
    lora = LoraConfig(
        r=config.lora.r,
        lora_alpha=config.lora.alpha,
        lora_dropout=config.lora.dropout,
        target_modules=config.lora.target_modules,
        use_dora=config.lora.use_dora,
        use_rslora=config.lora.use_rslora,
        task_type="CAUSAL_LM",
    )
    return model, lora


def quiet(trainer: Any) -> Any:
    """Drop the trainer's print-every-log callback: the Rich panel and metrics.jsonl show every log."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer
