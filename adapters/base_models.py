"""Base models known to this machine: folders under `$LORADOCK_HOME/models`, local paths, or hub ids.

Reading a model here means reading its `config.json` only, so that listing and resolving models stays cheap
(no torch, no weights).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

MODEL_MANIFEST = "loradock-model.json"
"""Written last into a model folder loradock produced; its presence marks the folder as complete."""


@dataclass(frozen=True)
class LocalModel:
    """A base model folder on disk, as `loradock models list` shows it."""

    name: str
    path: Path
    architecture: str
    size_bytes: int
    source: str


def resolve_base_model(ref: str, models_dir: Path) -> str:
    """Turn what a user typed into something vLLM and transformers can load.

    A folder path wins, then the name of a model under `models_dir`; anything else is taken as a Hugging Face
    id and passed through (it is only fetched where the hub is reachable).
    """
    as_path = Path(ref).expanduser()
    if as_path.is_dir():
        return str(as_path.resolve())
    named = models_dir / ref
    if (named / "config.json").is_file():
        return str(named)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise FileNotFoundError(f"base model folder {ref!r} does not exist")
    return ref


def local_model_folder(resolved: str) -> Path:
    """The folder holding a resolved base model: itself, or its Hugging Face snapshot (downloaded if needed,
    through huggingface_hub, which honours HF_HUB_OFFLINE and its cache)."""
    if Path(resolved).is_dir():
        return Path(resolved)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(resolved, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model"]))


def served_name_for(ref: str) -> str:
    """The name clients use for a base model when none is configured: its folder or repository name."""
    return Path(ref.rstrip("/")).name


def list_local_models(models_dir: Path) -> list[LocalModel]:
    """Every complete model folder under `models_dir`, sorted by name."""
    if not models_dir.is_dir():
        return []
    found = []
    for folder in sorted(models_dir.iterdir()):
        config_file = folder / "config.json"
        if folder.name.startswith(".") or not config_file.is_file():
            continue
        config = json.loads(config_file.read_text())
        manifest_file = folder / MODEL_MANIFEST
        source = json.loads(manifest_file.read_text()).get("source", "?") if manifest_file.is_file() else "local"
        found.append(
            LocalModel(
                name=folder.name,
                path=folder,
                architecture=", ".join(config.get("architectures") or [config.get("model_type", "?")]),
                size_bytes=sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()),
                source=source,
            )
        )
    return found
