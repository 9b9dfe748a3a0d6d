"""A version's reference profile: what its prompts and answers looked like when it was trained or registered.

Built from the training split by `loradock train`, from a sample file the owner supplies
(`loradock drift profile`), or from the first production prompts when neither exists. It keeps per-prompt
features (lengths and token rows, at most MAX_PROMPTS prompts), embeddings of a sample, and what the answers
looked like (lengths, empty, refused and cut-off rates), stored as one compressed numpy archive.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from adapters.datafiles.shapes import Example
from adapters.drift.features import Embedder, is_refusal, prompt_text
from adapters.errors import InvalidInputError
from adapters.tables import utcnow

MAX_PROMPTS = 2000
MAX_EMBEDDINGS = 256
VOCABULARY = 1000
"""The reference's most frequent tokens; every other token counts in one 'other' bucket."""
MIN_PROMPTS = 20
SOURCES = ("training-data", "sample-file", "production")


@dataclass
class ReferenceAnswer:
    text: str
    finish_reason: str | None = "stop"


@dataclass
class DriftProfile:
    source: str
    embedder: str
    created_at: datetime
    prompts: int
    lengths: np.ndarray
    vocabulary: np.ndarray
    """Token ids of the reference's VOCABULARY most frequent tokens; column i of a token row is vocabulary[i],
    the last column is every other token."""
    token_offsets: np.ndarray
    token_columns: np.ndarray
    """Per prompt, its tokens as column indices: prompt i is token_columns[token_offsets[i]:token_offsets[i+1]]."""
    embeddings: np.ndarray
    answer_lengths: np.ndarray
    answers_empty: int
    answers_refused: int
    answers_truncated: int

    @property
    def answers(self) -> int:
        return int(self.answer_lengths.size)

    def columns(self, tokens: np.ndarray) -> np.ndarray:
        """Token ids mapped to this profile's columns (unknown ids go to the last, 'other', column)."""
        index = np.clip(np.searchsorted(self.vocabulary, tokens), 0, self.vocabulary.size - 1)
        found = self.vocabulary[index] == tokens
        return np.where(found, index, self.vocabulary.size)

    def summary(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "embedder": self.embedder,
            "created_at": self.created_at.isoformat(),
            "prompts": self.prompts,
            "answers": self.answers,
            "median_prompt_tokens": float(np.median(self.lengths)) if self.lengths.size else None,
        }

    def to_bytes(self) -> bytes:
        meta = {
            "source": self.source,
            "embedder": self.embedder,
            "created_at": self.created_at.isoformat(),
            "prompts": self.prompts,
            "answers_empty": self.answers_empty,
            "answers_refused": self.answers_refused,
            "answers_truncated": self.answers_truncated,
        }
        buffer = io.BytesIO()
        np.savez_compressed(
            buffer,
            meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            lengths=self.lengths,
            vocabulary=self.vocabulary,
            token_offsets=self.token_offsets,
            token_columns=self.token_columns,
            embeddings=self.embeddings.astype(np.float16),
            answer_lengths=self.answer_lengths,
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> DriftProfile:
        with np.load(io.BytesIO(data)) as arrays:
            meta = json.loads(arrays["meta"].tobytes().decode())
            return cls(
                source=meta["source"],
                embedder=meta["embedder"],
                created_at=datetime.fromisoformat(meta["created_at"]),
                prompts=meta["prompts"],
                lengths=arrays["lengths"],
                vocabulary=arrays["vocabulary"],
                token_offsets=arrays["token_offsets"],
                token_columns=arrays["token_columns"],
                embeddings=arrays["embeddings"].astype(np.float32),
                answer_lengths=arrays["answer_lengths"],
                answers_empty=meta["answers_empty"],
                answers_refused=meta["answers_refused"],
                answers_truncated=meta["answers_truncated"],
            )


def build_profile(
    prompts: list[str],
    answers: list[ReferenceAnswer],
    embedder: Embedder,
    source: str,
    *,
    seed: int = 0,
) -> DriftProfile:
    """Profile `prompts` (and the answers given to them, if known); refuses fewer than MIN_PROMPTS prompts."""
    if source not in SOURCES:
        raise ValueError(f"unknown profile source {source!r}")
    kept = [text for text in prompts if text.strip()]
    if len(kept) < MIN_PROMPTS:
        raise InvalidInputError(f"a drift profile needs at least {MIN_PROMPTS} non-empty prompts, got {len(kept)}")
    rng = np.random.default_rng(seed)
    if len(kept) > MAX_PROMPTS:
        kept = [kept[i] for i in sorted(rng.choice(len(kept), MAX_PROMPTS, replace=False))]
    tokens = embedder.tokens(kept)
    frequency = Counter(int(token) for ids in tokens for token in ids)
    vocabulary = np.array(sorted(token for token, _ in frequency.most_common(VOCABULARY)), dtype=np.int32)
    sample = sorted(rng.choice(len(kept), min(MAX_EMBEDDINGS, len(kept)), replace=False))
    answer_tokens = embedder.tokens([answer.text for answer in answers]) if answers else []
    profile = DriftProfile(
        source=source,
        embedder=embedder.name,
        created_at=utcnow(),
        prompts=len(kept),
        lengths=np.array([ids.size for ids in tokens], dtype=np.int32),
        vocabulary=vocabulary,
        token_offsets=np.cumsum([0, *(ids.size for ids in tokens)]).astype(np.int64),
        token_columns=np.empty(0, np.int32),
        embeddings=embedder.embed([kept[i] for i in sample]),
        answer_lengths=np.array([ids.size for ids in answer_tokens], dtype=np.int32),
        answers_empty=sum(not answer.text.strip() for answer in answers),
        answers_refused=sum(is_refusal(answer.text) for answer in answers),
        answers_truncated=sum(answer.finish_reason == "length" for answer in answers),
    )
    joined = np.concatenate(tokens) if tokens else np.empty(0, np.int32)
    profile.token_columns = profile.columns(joined).astype(np.int32)
    return profile


def chat_reference(rows: list[dict[str, Any]]) -> tuple[list[str], list[ReferenceAnswer]]:
    """Prompts and answers of chat rows ({"messages": [...]}) or prompt/completion rows, as the server sees them."""
    prompts, answers = [], []
    for row in rows:
        messages = row.get("messages")
        if messages is not None:
            turns = [m for m in messages if isinstance(m, dict)]
            last_assistant = max((i for i, m in enumerate(turns) if m.get("role") == "assistant"), default=None)
            asked = turns if last_assistant is None else turns[:last_assistant]
            prompts.append(prompt_text({"messages": asked}))
            if last_assistant is not None:
                answers.append(ReferenceAnswer(str(turns[last_assistant].get("content") or "")))
        else:
            prompts.append(prompt_text(row))
            if "completion" in row:
                answers.append(ReferenceAnswer(str(row["completion"] or "")))
    return prompts, answers


def read_sample_file(path: Path) -> tuple[list[str], list[ReferenceAnswer]]:
    """Prompts (and answers, where the file has them) from a sample file: JSONL chat or prompt/completion rows,
    or plain text with one prompt per line."""
    if not path.is_file():
        raise InvalidInputError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"{path}: not UTF-8 text ({exc})") from exc
    if path.suffix != ".jsonl":
        return [line for line in lines if line.strip()], []
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"{path}:{number}: not valid JSON ({exc.msg})") from exc
        if not isinstance(row, dict) or not ("messages" in row or "prompt" in row):
            raise InvalidInputError(f"{path}:{number}: expected an object with 'messages' or 'prompt'")
        rows.append(row)
    return chat_reference(rows)


def examples_reference(examples: list[Example]) -> tuple[list[str], list[ReferenceAnswer]]:
    """Prompts and answers of prepared training examples: a chat's turns before its last one and that last
    answer; plain text as a prompt with no answer."""
    prompts, answers = [], []
    for example in examples:
        if example.is_chat:
            *asked, (_, answer) = example.messages
            prompts.append(prompt_text({"messages": [{"role": role, "content": text} for role, text in asked]}))
            answers.append(ReferenceAnswer(answer))
        elif example.text is not None:
            prompts.append(example.text)
            if example.label is not None:
                answers.append(ReferenceAnswer(example.label))
    return prompts, answers
