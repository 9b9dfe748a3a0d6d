"""What an export starts from: a registered adapter version, the base it was trained for, and its test split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from adapters.base_models import local_model_folder, resolve_base_model
from adapters.datafiles.readers import read_rows
from adapters.datafiles.shapes import Example, detect_shape, to_examples
from adapters.errors import HubError
from adapters.fingerprint import BaseModelSpec, describe_difference
from adapters.hub import Hub
from adapters.naming import parse_model_ref
from adapters.records import VersionView

Progress = Callable[[str], None]
"""Receives a line that says what an export is doing now (shown under a spinner)."""


@dataclass(frozen=True)
class ExportOptions:
    base_model: str | None = None
    data: Path | None = None
    """Test prompts; by default the adapter's own test split from its training run."""
    max_prompts: int = 20
    max_new_tokens: int = 48


class ExportError(ValueError):
    """The export cannot start or finish; the message says what is wrong and where."""


@dataclass(frozen=True)
class ExportSource:
    version: VersionView
    adapter_dir: Path
    base_folder: Path
    test: list[Example]
    """Chat examples of the adapter's test split: the prompts every export is measured on."""
    test_file: Path


def open_source(hub: Hub, ref: str, *, base_model: str | None, data: Path | None) -> ExportSource:
    """Resolve `ref` (NAME, NAME@VERSION or NAME:ALIAS) and check it fits the base model before any work starts."""
    model_ref = parse_model_ref(ref)
    if model_ref is None:
        raise ExportError(f"{ref!r} is not an adapter reference (NAME, NAME@VERSION or NAME:ALIAS)")
    base_ref = base_model or hub.settings.base_model
    try:
        base_folder = local_model_folder(resolve_base_model(base_ref, hub.settings.models_dir))
        spec = BaseModelSpec.from_folder(base_folder)
        if model_ref.version is None:  # as the server resolves it; a split alias gives its first target
            version = hub.registry.resolve(model_ref, spec.fingerprint_sha256).choices[0][0]
        else:
            version = hub.registry.get_version(model_ref.name, model_ref.version)
    except (HubError, OSError, ValueError) as exc:
        raise ExportError(f"{ref}: {exc}") from exc
    if spec.fingerprint_sha256 != version.base_fingerprint_sha256:
        difference = describe_difference(spec.fingerprint, version.base_fingerprint)
        raise ExportError(f"{version.ref} was trained for another base than {base_ref} ({difference})")
    adapter_dir = hub.store.path(version.sha256)
    if not adapter_dir.is_dir():
        raise ExportError(f"the files of {version.ref} are missing from the store")
    test_file = data or _run_split(version, "test", "--data")
    system_prompt = (_run_config(version).get("data") or {}).get("system_prompt")
    return ExportSource(version, adapter_dir, base_folder, _chat_examples(test_file, system_prompt), test_file)


def _run_config(version: VersionView) -> dict[str, Any]:
    run_dir = version.metadata.get("run_dir")
    config = Path(run_dir) / "config.yaml" if run_dir else None
    if config is None or not config.is_file():
        return {}
    loaded = yaml.safe_load(config.read_text())
    return loaded if isinstance(loaded, dict) else {}


def train_split(source: ExportSource, path: Path | None) -> list[Example]:
    """The examples a student is distilled on: `path`, or the training split of the adapter's run."""
    train_file = path or _run_split(source.version, "train", "--train-data")
    return _chat_examples(train_file, (_run_config(source.version).get("data") or {}).get("system_prompt"))


def _run_split(version: VersionView, split: str, option: str) -> Path:
    run_dir = version.metadata.get("run_dir")
    found = Path(run_dir) / "data" / f"{split}.jsonl" if run_dir else None
    if found is None or not found.is_file():
        raise ExportError(
            f"{version.ref} carries no {split} split (it was not trained here, or its run folder is gone): "
            f"pass {option}"
        )
    return found


def _chat_examples(path: Path, system_prompt: object) -> list[Example]:
    if not path.is_file():
        raise ExportError(f"test data {path} does not exist")
    rows, refused = read_rows(path)
    if refused:
        raise ExportError(f"{path}:{refused[0].line}: {refused[0].reason}")
    examples, wrong = to_examples(rows, detect_shape(rows), system_prompt if isinstance(system_prompt, str) else None)
    if wrong:
        raise ExportError(f"{path}:{wrong[0].line}: {wrong[0].reason}")
    chats = [example for example in examples if example.is_chat]
    if not chats:
        raise ExportError(f"{path} has no prompt/answer examples to measure the export on")
    return chats
