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
    contract: dict[str, Any] = field(default_factory=dict)
    """What training and serving must agree on: chat template, tokenizer and special tokens (see `text_contract`)."""

    @property
    def fingerprint_sha256(self) -> str:
        return fingerprint_sha256(self.fingerprint)

    @classmethod
    def from_folder(cls, folder: Path) -> BaseModelSpec:
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise SourceError(f"{folder} has no config.json: it is not a Hugging Face model folder")
        config = json.loads(config_file.read_text())
        return cls(fingerprint_of(config), _linear_shapes(folder), text_contract(folder))


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


def text_contract(folder: Path) -> dict[str, Any]:
    """Hashes of how a base model turns chats into tokens, read from its tokenizer files.

    An adapter is only right over a base that renders and tokenizes exactly as the one it was trained on; a
    different chat template, vocabulary or end-of-turn token makes it answer in a layout it never learned (or
    never stop). Training records this contract and registration and serving compare it.
    """
    tokenizer_config = _json_or_empty(folder / "tokenizer_config.json")
    template = tokenizer_config.get("chat_template")
    template_file = folder / "chat_template.jinja"
    if template_file.is_file():
        template = template_file.read_text()
    tokenizer_file = folder / "tokenizer.json"
    return {
        "chat_template_sha256": _sha256_text(template) if isinstance(template, str) else None,
        "tokenizer_sha256": _sha256_tokenizer(tokenizer_file) if tokenizer_file.is_file() else None,
        "eos_token": _token_text(tokenizer_config.get("eos_token")),
        "pad_token": _token_text(tokenizer_config.get("pad_token")),
    }


def contract_mismatch(served: dict[str, Any], trained: dict[str, Any]) -> str | None:
    """Which part of the contract differs, in words, or None when the adapter fits."""
    names = {
        "chat_template_sha256": "chat template",
        "tokenizer_sha256": "tokenizer vocabulary",
        "eos_token": "end-of-sequence token",
        "pad_token": "padding token",
    }
    for key, name in names.items():
        if key in trained and trained[key] != served.get(key):
            if key.endswith("sha256"):
                return f"the {name} differs from the served base's"
            return f"the {name} is {trained[key]!r}, the served base's is {served.get(key)!r}"
    return None


def _json_or_empty(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return data if isinstance(data, dict) else {}


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _sha256_tokenizer(path: Path) -> str:
    """The vocabulary, merges and added tokens, not formatting (tokenizer.json files differ in key order)."""
    data = json.loads(path.read_text())
    essential = {key: data.get(key) for key in ("model", "added_tokens", "normalizer", "pre_tokenizer")}
    return _sha256_text(json.dumps(essential, sort_keys=True))


def _token_text(token: Any) -> str | None:
    if isinstance(token, dict):  # older tokenizer configs store AddedToken objects
        return str(token.get("content"))
    return str(token) if token is not None else None


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
