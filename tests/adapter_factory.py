"""Small peft-format LoRA adapters written directly with numpy: hundreds of them in seconds, and broken ones
on purpose (the bad-adapter corpus)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from adapters.fingerprint import BaseModelSpec


def lora_config(rank: int, modules: Sequence[str], **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": list(modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "base_model_name_or_path": "base",
    }
    config.update(overrides)
    return config


def lora_tensors(
    base: BaseModelSpec,
    *,
    rank: int,
    modules: Sequence[str],
    seed: int,
    scale: float = 1.0,
    dtype: type = np.float16,
) -> dict[str, np.ndarray]:
    """Random A and B for every base module whose name ends with one of `modules`."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for module, (out_features, in_features) in sorted(base.linear_shapes.items()):
        if not module.endswith(tuple(f".{m}" for m in modules)):
            continue
        a = rng.normal(0, scale / np.sqrt(in_features), (rank, in_features))
        b = rng.normal(0, scale / np.sqrt(rank), (out_features, rank))
        tensors[f"base_model.model.{module}.lora_A.weight"] = a.astype(dtype)
        tensors[f"base_model.model.{module}.lora_B.weight"] = b.astype(dtype)
    return tensors


def write_adapter(
    out: Path,
    base: BaseModelSpec,
    *,
    seed: int,
    rank: int = 8,
    modules: Sequence[str] = ("q_proj", "v_proj"),
    scale: float = 1.0,
    config: dict[str, Any] | None = None,
    tensors: dict[str, np.ndarray] | None = None,
) -> Path:
    """A complete adapter folder (adapter_config.json + adapter_model.safetensors)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "adapter_config.json").write_text(json.dumps(config or lora_config(rank, modules)))
    weights = tensors if tensors is not None else lora_tensors(base, rank=rank, modules=modules, seed=seed, scale=scale)
    save_file(weights, str(out / "adapter_model.safetensors"))
    return out
