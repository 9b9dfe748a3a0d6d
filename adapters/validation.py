"""Checks an adapter folder must pass before anything is stored: safety, format, and fit with the served base.

Every refusal names the file, tensor or setting at fault. Nothing here loads a tensor into a framework: weights
are read as raw safetensors bytes (never unpickled), so a hostile file cannot run code.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.errors import InvalidAdapterError, TooLargeError
from adapters.fingerprint import BaseModelSpec, contract_mismatch, describe_difference
from adapters.safetensors_io import find_non_finite, read_header

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "loradock-adapter.json"
"""Written by `loradock train`: the base fingerprint and the chat-template/tokenizer hashes it was trained with."""

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz", ".h5", ".msgpack"}
ALLOWED_SUFFIXES = {".json", ".safetensors", ".md", ".txt", ".jinja", ".model", ".yaml", ".yml"}
UNSERVABLE_FEATURES = {
    "use_dora": "DoRA adapters",
    "lora_bias": "LoRA bias terms",
    "layer_replication": "layer replication",
    "alora_invocation_tokens": "activated LoRA",
}
LORA_TENSOR = re.compile(r"^base_model\.model\.(?P<module>.+)\.(?P<part>lora_A|lora_B)(?:\.[A-Za-z0-9_-]+)?\.weight$")


@dataclass(frozen=True)
class Limits:
    max_rank: int
    max_bytes: int
    max_files: int


@dataclass(frozen=True)
class AdapterFacts:
    """What registration records about a valid adapter."""

    rank: int
    alpha: float
    target_modules: list[str]
    size_bytes: int
    manifest: dict[str, Any]


def validate_adapter(folder: Path, base: BaseModelSpec, limits: Limits) -> AdapterFacts:
    """Return the adapter's facts, or raise InvalidAdapterError saying what is wrong."""
    size = _check_files(folder, limits)
    config = _read_config(folder / CONFIG_FILE)
    rank, alpha, targets = _check_config(config, limits)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise InvalidAdapterError(f"{WEIGHTS_FILE} is missing: adapter weights must be in safetensors")
    tensors = read_header(weights)
    _check_tensors(tensors, base, rank, config.get("rank_pattern") or {})
    bad = find_non_finite(weights, tensors)
    if bad is not None:
        raise InvalidAdapterError(f"{WEIGHTS_FILE}: tensor {bad!r} holds NaN or infinite values")
    manifest = _check_manifest(folder / MANIFEST_FILE, base)
    return AdapterFacts(rank=rank, alpha=alpha, target_modules=targets, size_bytes=size, manifest=manifest)


def _check_files(folder: Path, limits: Limits) -> int:
    if not folder.is_dir():
        raise InvalidAdapterError(f"{folder} is not a folder")
    total = 0
    count = 0
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder)
        if path.is_symlink():
            raise InvalidAdapterError(f"{relative} is a symbolic link: adapters must hold plain files only")
        if path.is_dir():
            continue
        if not path.is_file():
            raise InvalidAdapterError(f"{relative} is not a regular file")
        suffix = path.suffix.lower()
        if suffix in PICKLE_SUFFIXES:
            raise InvalidAdapterError(
                f"{relative}: pickle-based files are refused (loading them can run code); save weights as safetensors"
            )
        if suffix not in ALLOWED_SUFFIXES:
            raise InvalidAdapterError(
                f"{relative}: unexpected file type {suffix or '(none)'}; allowed: {sorted(ALLOWED_SUFFIXES)}"
            )
        count += 1
        total += path.stat().st_size
        if count > limits.max_files:
            raise TooLargeError(f"the adapter has more than {limits.max_files} files")
        if total > limits.max_bytes:
            raise TooLargeError(f"the adapter is larger than {limits.max_bytes} bytes")
    return total


def _read_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise InvalidAdapterError(f"{CONFIG_FILE} is missing: it is not a peft adapter folder")
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapterError(f"{CONFIG_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(config, dict):
        raise InvalidAdapterError(f"{CONFIG_FILE} must hold a JSON object")
    return config


def _check_config(config: dict[str, Any], limits: Limits) -> tuple[int, float, list[str]]:
    peft_type = str(config.get("peft_type", "")).upper()
    if peft_type != "LORA":
        raise InvalidAdapterError(f"{CONFIG_FILE}: peft_type is {config.get('peft_type')!r}, only LORA is served")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise InvalidAdapterError(f"{CONFIG_FILE}: r must be a positive integer, got {rank!r}")
    alpha = config.get("lora_alpha", rank)
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or alpha <= 0:
        raise InvalidAdapterError(f"{CONFIG_FILE}: lora_alpha must be a positive number, got {alpha!r}")
    ranks = [rank, *(v for v in (config.get("rank_pattern") or {}).values() if isinstance(v, int))]
    if max(ranks) > limits.max_rank:
        raise InvalidAdapterError(
            f"{CONFIG_FILE}: rank {max(ranks)} is above this server's max_lora_rank of {limits.max_rank}"
        )
    for setting, feature in UNSERVABLE_FEATURES.items():
        if config.get(setting):
            raise InvalidAdapterError(
                f"{CONFIG_FILE}: {setting} is set, and vLLM cannot serve {feature}; "
                "merge the adapter into the base instead (loradock export merged)"
            )
    if config.get("modules_to_save"):
        raise InvalidAdapterError(
            f"{CONFIG_FILE}: modules_to_save ({config['modules_to_save']}) trains full layers, which LoRA serving "
            "cannot swap per request"
        )
    targets = config.get("target_modules")
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise InvalidAdapterError(f"{CONFIG_FILE}: target_modules must name the layers adapted, got {targets!r}")
    return rank, float(alpha), sorted(targets)


def _check_tensors(tensors: dict[str, Any], base: BaseModelSpec, rank: int, rank_pattern: dict[str, Any]) -> None:
    if not tensors:
        raise InvalidAdapterError(f"{WEIGHTS_FILE} holds no tensors")
    parts: dict[str, dict[str, tuple[int, ...]]] = {}
    for name, info in tensors.items():
        match = LORA_TENSOR.match(name)
        if match is None:
            raise InvalidAdapterError(f"{WEIGHTS_FILE}: tensor {name!r} is not a LoRA A/B matrix of a linear layer")
        if len(info.shape) != 2:
            raise InvalidAdapterError(f"{WEIGHTS_FILE}: tensor {name!r} has shape {list(info.shape)}, expected 2-D")
        parts.setdefault(match["module"], {})[match["part"]] = info.shape
    for module, pair in sorted(parts.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            missing = ({"lora_A", "lora_B"} - set(pair)).pop()
            raise InvalidAdapterError(f"{WEIGHTS_FILE}: {module} has no {missing} matrix")
        if module not in base.linear_shapes:
            raise InvalidAdapterError(
                f"{WEIGHTS_FILE}: {module} does not exist in the served base "
                f"({base.fingerprint['architecture']}, {base.fingerprint['num_hidden_layers']} layers): "
                "the adapter was made for another base model"
            )
        out_features, in_features = base.linear_shapes[module]
        module_rank = _rank_for(module, rank, rank_pattern)
        a_shape, b_shape = pair["lora_A"], pair["lora_B"]
        if a_shape != (module_rank, in_features) or b_shape != (out_features, module_rank):
            raise InvalidAdapterError(
                f"{WEIGHTS_FILE}: {module} has lora_A {list(a_shape)} and lora_B {list(b_shape)}, but the served base "
                f"needs [{module_rank}, {in_features}] and [{out_features}, {module_rank}] (hidden size "
                f"{base.fingerprint['hidden_size']}): the adapter was made for another base model or rank"
            )


def _rank_for(module: str, rank: int, rank_pattern: dict[str, Any]) -> int:
    for pattern, value in rank_pattern.items():
        if module.endswith(pattern) or re.fullmatch(pattern, module):
            return int(value)
    return rank


def _check_manifest(path: Path, base: BaseModelSpec) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidAdapterError(f"{MANIFEST_FILE} is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise InvalidAdapterError(f"{MANIFEST_FILE} must hold a JSON object")
    trained_on = manifest.get("base_fingerprint")
    if isinstance(trained_on, dict) and trained_on != base.fingerprint:
        raise InvalidAdapterError(
            f"{MANIFEST_FILE}: the adapter was trained on another base model "
            f"({describe_difference(base.fingerprint, trained_on)})"
        )
    contract = manifest.get("contract")
    if isinstance(contract, dict):
        mismatch = contract_mismatch(base.contract, contract)
        if mismatch is not None:
            raise InvalidAdapterError(
                f"{MANIFEST_FILE}: {mismatch}; the adapter would see prompts laid out differently from training"
            )
    return manifest
