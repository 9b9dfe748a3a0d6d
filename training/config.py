"""What a training run is told: dataclasses with a docstring per field, read from YAML and flags.

The resolved configuration (every default filled in) is printed when a run starts and saved in the run folder,
so a run can be repeated from its own record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from adapters.settings import DEMO_MODEL_NAME
from training.data.prepare import STRICT_SECTION, DataSettings


class ConfigError(ValueError):
    """A configuration value or key is wrong; the message names it."""


class LoraSettings(BaseModel):
    """The LoRA adapter to train (peft)."""

    model_config = STRICT_SECTION

    r: int = Field(default=16, ge=1)
    """Rank of the update matrices."""
    alpha: int = Field(default=32, gt=0)
    """Scaling numerator: updates are scaled by alpha / r (alpha / sqrt(r) with rslora)."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the LoRA input during training."""
    target_modules: str | list[str] = "all-linear"
    """Layers to adapt: a list of module names, or `all-linear`."""
    use_dora: bool = False
    """Weight-decomposed LoRA (better at low rank; vLLM cannot serve it unmerged: export it merged)."""
    use_rslora: bool = False
    """Rank-stabilized scaling (alpha / sqrt(r)), steadier at high ranks."""


class TrainConfig(BaseModel):
    """One fine-tuning run: base model, data, LoRA, optimizer, schedule, evaluation and registration."""

    model_config = STRICT_SECTION

    base_model: str = DEMO_MODEL_NAME
    """A local folder, a model under $LORADOCK_HOME/models, or a Hugging Face id."""
    method: Literal["supervised", "dpo"] = "supervised"
    """supervised: learn the answers (TRL SFT); dpo: learn to prefer chosen over rejected answers (TRL DPO)."""
    dpo_beta: float = Field(default=0.1, gt=0)
    """DPO only: how strongly the adapter may move away from the base (higher: closer to the base)."""
    data: DataSettings = Field(default_factory=DataSettings)
    lora: LoraSettings = Field(default_factory=LoraSettings)
    output_dir: str | None = None
    """The run folder; unset: $LORADOCK_HOME/runs/<run id>."""
    epochs: float = Field(default=1.0, gt=0)
    """Passes over the training split (ignored when max_steps is set)."""
    max_steps: int = -1
    """Optimizer steps to run; -1: as many as `epochs` takes."""
    batch_size: int = Field(default=8, ge=1)
    """Examples per device per step."""
    gradient_accumulation: int = Field(default=1, ge=1)
    """Steps whose gradients are summed before each optimizer update."""
    learning_rate: float = Field(default=2e-4, gt=0)
    """Peak AdamW learning rate."""
    lr_scheduler: Literal["cosine", "linear"] = "cosine"
    """Decay after warm-up."""
    warmup_ratio: float = Field(default=0.05, ge=0, le=1)
    """Fraction of the steps spent warming the learning rate up."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Gradient clipping norm."""
    bf16: bool | None = None
    """bfloat16 autocast; unset: on where the hardware has it."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory for large models, about 30 % slower."""
    packing: bool = False
    """Pack several short examples into one sequence (faster on short data)."""
    eval_every: int = Field(default=50, ge=1)
    """Validate every this many steps."""
    eval_samples: int | None = Field(default=128, ge=1)
    """Validation examples used during training (the whole split when unset)."""
    early_stopping_patience: int | None = Field(default=3, ge=1)
    """Stop after this many validations without improvement; unset: never stop early."""
    save_every: int = Field(default=50, ge=1)
    """Checkpoint every this many steps (what --resume restarts from)."""
    save_total_limit: int = Field(default=2, ge=1)
    """Checkpoints kept (the best one is always kept)."""
    seed: int = 0
    """Seed of data order, initialization and dropout."""
    tensorboard: bool = False
    """Also write TensorBoard event files."""
    evaluate: bool = True
    """Evaluate base and tuned models on the test split at the end of the run."""
    eval_max_new_tokens: int = Field(default=128, ge=1)
    """Longest answer generated during evaluation."""
    init_from: str | None = None
    """Continue from an existing adapter instead of fresh LoRA weights: a registered NAME@VERSION, or an adapter
    folder. Its own LoRA settings (rank, targets) then apply, and the version is recorded as the parent."""
    register_as: str | None = None
    """Register the adapter in the hub under this name when the run succeeds."""
    owner_tenant: str | None = None
    """The tenant that will own the registered adapter (fine-tuning jobs set their tenant); unset: ops-managed."""

    @model_validator(mode="after")
    def _checkpoints_line_up_with_validation(self) -> TrainConfig:
        # Early stopping restores the best checkpoint, so every validation must have one to restore.
        if self.early_stopping_patience is not None and self.save_every % self.eval_every:
            raise ValueError(
                f"save_every ({self.save_every}) must be a multiple of eval_every ({self.eval_every}) "
                "when early stopping is on"
            )
        return self


def load_config(path: Path | None, overrides: dict[str, Any]) -> TrainConfig:
    """YAML file (optional), then `section.key=value` overrides; unknown keys and bad values are refused."""
    raw: dict[str, Any] = {}
    if path is not None:
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of settings")
        raw = loaded
    for dotted, value in overrides.items():
        target = raw
        *parents, leaf = dotted.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"{dotted}: {parent} is not a section")
        target[leaf] = value
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        source = f"{path}: " if path else ""
        raise ConfigError(f"{source}{where}: {first['msg']} (got {first.get('input')!r})") from exc
