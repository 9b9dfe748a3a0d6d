"""What makes a base model the same base, whatever its name: its architecture and shapes.

An adapter fits a base when its LoRA matrices match the base's linear layers, so besides the fingerprint
(architecture, hidden size, layer count, vocab size) we keep the shape of every linear weight, read from the
safetensors headers (no weights are loaded).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapters.errors import SourceError
from adapters.safetensors_io import read_header

FINGERPRINT_KEYS = (
    "architecture",
    "hidden_size",
    "num_hidden_layers",
    "vocab_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
)


@dataclass(frozen=True)
class BaseModelSpec:
    fingerprint: dict[str, Any]
    linear_shapes: dict[str, tuple[int, int]] = field(repr=False)
    """Module path (e.g. `model.layers.0.self_attn.q_proj`) -> (out_features, in_features)."""

    @property
    def fingerprint_sha256(self) -> str:
        return fingerprint_sha256(self.fingerprint)

    @classmethod
    def from_folder(cls, folder: Path) -> BaseModelSpec:
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise SourceError(f"{folder} has no config.json: it is not a Hugging Face model folder")
        config = json.loads(config_file.read_text())
        return cls(fingerprint_of(config), _linear_shapes(folder))


def fingerprint_of(config: dict[str, Any]) -> dict[str, Any]:
    """The identifying shape facts of a model config (the text part, for multimodal configs)."""
    text = config.get("text_config") or config
    architectures = config.get("architectures") or [config.get("model_type", "unknown")]
    facts: dict[str, Any] = {"architecture": architectures[0]}
    for key in FINGERPRINT_KEYS[1:]:
        facts[key] = text.get(key)
    if facts["num_key_value_heads"] is None:
        facts["num_key_value_heads"] = facts["num_attention_heads"]
    return facts


def fingerprint_sha256(fingerprint: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def describe_difference(ours: dict[str, Any], theirs: dict[str, Any]) -> str:
    """`hidden_size 2048 vs 576, num_hidden_layers 24 vs 30`, for error messages."""
    return ", ".join(f"{key} {theirs.get(key)} vs {ours.get(key)}" for key in ours if ours.get(key) != theirs.get(key))


def _linear_shapes(folder: Path) -> dict[str, tuple[int, int]]:
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise SourceError(f"{folder} has no .safetensors weights")
    shapes = {}
    for weights in files:
        for name, info in read_header(weights).items():
            if name.endswith(".weight") and len(info.shape) == 2:
                shapes[name.removesuffix(".weight")] = (info.shape[0], info.shape[1])
    return shapes
