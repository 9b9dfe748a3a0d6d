"""Results that take an engine to compute, kept under `LORADOCK_HOME/cache` once computed: export teachers'
measurements (`teachers/`) and evaluation answers (`answers/`).

Each result is one JSON file named by a hash of everything that produced it. An adapter counts by its weights and
configuration, never by its name or folder, so a re-registered or changed adapter is never given another's
result; a base model by its files' sizes and modification times (hashing a large base's weights would take longer
than what is cached).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from adapters.store import file_sha256, write_atomic

WEIGHT_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_digest(folder: Path | None) -> str:
    """The adapter's weights and configuration ("base" for none); a model card written beside them doesn't count."""
    if folder is None:
        return "base"
    files = [f"{name}\0{file_sha256(folder / name)}" for name in WEIGHT_FILES if (folder / name).is_file()]
    return hashlib.sha256("\n".join(files).encode()).hexdigest()


def base_identity(folder: str | Path) -> list[object]:
    """The base model folder and the size and modification time of each of its files."""
    root = Path(folder)
    files = sorted(path for path in root.iterdir() if path.is_file()) if root.is_dir() else []
    return [str(root.resolve()), [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files]]


class ResultCache:
    """JSON results under `folder`, one file per key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @staticmethod
    def key(*parts: Any) -> str:
        """A file name for the result of `parts` (anything JSON can write)."""
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    def get(self, key: str) -> Any | None:
        """The stored result, or None when there is none or its file is damaged."""
        try:
            return json.loads((self.folder / f"{key}.json").read_text())
        except (OSError, ValueError):
            return None

    def put(self, key: str, result: Any) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / f"{key}.json", json.dumps(result))
