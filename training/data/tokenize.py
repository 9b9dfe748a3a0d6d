"""Examples to token ids and loss labels, rendered exactly as the server renders prompts.

Chats are rendered with `adapters.chat_template.render_chat` and the base tokenizer, the very call the server
makes, so the tokens an adapter learns on are the tokens it will be served. Only the assistant's turns carry
loss, and each turn's span runs through the template's end-of-turn token, so the model learns to stop; the
boundaries come from rendering each conversation prefix (which also checks the template is prefix-preserving).
TRL's own assistant masks need `{% generation %}` markers that most shipped templates (SmolLM2's included) lack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from adapters.chat_template import render_chat
from adapters.datafiles.readers import DataError
from adapters.datafiles.shapes import Example

IGNORE = -100


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def supervised(self) -> int:
        return sum(label != IGNORE for label in self.labels)


def encode(tokenizer: Any, example: Example) -> Encoded:
    """Token ids and labels (-100 where there is no loss) for one example."""
    if not example.is_chat:
        ids = list(tokenizer.encode(example.text or "", add_special_tokens=False))
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        return Encoded(ids, list(ids))
    chat = example.chat()
    full = _ids(tokenizer, render_chat(tokenizer, chat, add_generation_prompt=False))
    labels = [IGNORE] * len(full)
    for index, (role, _) in enumerate(example.messages):
        if role != "assistant":
            continue
        start = _prefix_length(tokenizer, full, render_chat(tokenizer, chat[:index], add_generation_prompt=True))
        end = _prefix_length(tokenizer, full, render_chat(tokenizer, chat[: index + 1], add_generation_prompt=False))
        labels[start:end] = full[start:end]
    return Encoded(full, labels)


def pad_batch(items: list[Encoded]) -> tuple[Any, Any, Any]:
    """(input_ids, attention_mask, labels) tensors of `items`, right-padded to the longest."""
    import torch

    width = max(len(item.input_ids) for item in items)
    ids = torch.zeros((len(items), width), dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for row, item in enumerate(items):
        ids[row, : len(item.input_ids)] = torch.tensor(item.input_ids)
        mask[row, : len(item.input_ids)] = 1
        labels[row, : len(item.labels)] = torch.tensor(item.labels)
    return ids, mask, labels


def check_stop_token(tokenizer: Any, encoded: Encoded) -> None:
    """Refuse to train when the end-of-turn token carries no loss: the tuned model would never stop."""
    eos = tokenizer.eos_token_id
    if eos is not None and not any(label == eos for label in encoded.labels):
        raise DataError(
            f"the end-of-turn token {tokenizer.eos_token!r} is not supervised in the rendered examples; "
            "a model tuned on them would not learn to stop (check the chat template)"
        )


def render_sample(tokenizer: Any, encoded: Encoded) -> list[tuple[str, bool]]:
    """The example as (text piece, carries loss) runs, for showing the loss mask before training."""
    runs: list[tuple[str, bool]] = []
    piece: list[int] = []
    supervised = encoded.labels[0] != IGNORE if encoded.labels else False
    for token, label in zip(encoded.input_ids, encoded.labels, strict=True):
        if (label != IGNORE) != supervised:
            runs.append((tokenizer.decode(piece), supervised))
            piece, supervised = [], label != IGNORE
        piece.append(token)
    if piece:
        runs.append((tokenizer.decode(piece), supervised))
    return runs


def _ids(tokenizer: Any, text: str) -> list[int]:
    # The template wrote the special tokens into the text already (as the server's prompt builder assumes).
    return list(tokenizer.encode(text, add_special_tokens=False))


def _prefix_length(tokenizer: Any, full: list[int], prefix_text: str) -> int:
    prefix = _ids(tokenizer, prefix_text)
    if full[: len(prefix)] != prefix:
        raise DataError(
            "the chat template is not prefix-preserving (a conversation's rendering does not start with the "
            "rendering of its first turns), so assistant turns cannot be masked reliably"
        )
    return len(prefix)
