"""Greedy answers of a model on a set of prompts, kept once computed.

A retrain compares prod with its candidate on the original test split and on held-out feedback; prod's answers
there are the ones its own training's evaluation produced (prod's tuned answers on the same test split), and the
next retrain asks for them again. Greedy decoding in float32 by the same engine gives the same tokens for the same
adapter, prompts and answer length, so they are looked up instead of generated: the demo task's production loop
spends about 30 s less per retrain on 2 cores. Keyed by the adapter's content, never by its name, so a
re-registered or changed adapter is never served another's answers; the base by its files' sizes and times (hashing
a large base's weights would take longer than the answers).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from adapters.store import write_atomic

REVISION = 1
"""Part of the key: bump it when the engine set-up that produces answers changes (dtype, sampling)."""
WEIGHT_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def adapter_digest(folder: Path | None) -> str:
    """The adapter's weights and configuration; the model card and other files written beside them don't count."""
    if folder is None:
        return "base"
    digest = hashlib.sha256()
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def base_identity(folder: str) -> list[object]:
    """The base model folder and the size and modification time of each of its files."""
    root = Path(folder)
    files = sorted(path for path in root.iterdir() if path.is_file()) if root.is_dir() else []
    return [str(root.resolve()), [(path.name, path.stat().st_size, path.stat().st_mtime_ns) for path in files]]


class AnswerCache:
    """Answers stored as JSON under `folder`, one file per (base, adapter, prompts, answer length, LoRA rank)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def key(
        self, engine: str, base: str, adapter: str, prompts: list[list[int]], max_new_tokens: int, rank: int
    ) -> str:
        """`engine` is the generating engine's version (another release may decode a token differently) and
        `adapter` the `adapter_digest` of the adapter."""
        parts = [REVISION, engine, base_identity(base), adapter, prompts, max_new_tokens, rank]
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]

    def get(self, key: str) -> list[str] | None:
        path = self.folder / f"{key}.json"
        try:
            answers = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return [str(answer) for answer in answers] if isinstance(answers, list) else None

    def put(self, key: str, answers: list[str]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.folder / f"{key}.json", json.dumps(answers))
