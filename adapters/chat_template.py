"""Rendering chat messages into the one prompt string a base model was tuned on.

Training and serving both call `render_chat`, with the base model's own tokenizer, so a fine-tuned adapter
sees at serving time exactly the text layout it learned from (the training/serving parity contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class ChatTokenizer(Protocol):
    """The part of a Hugging Face tokenizer that renders chats (duck-typed: no transformers import here)."""

    chat_template: str | None

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...


Message = dict[str, str]


def render_chat(tokenizer: ChatTokenizer, messages: Sequence[Message], *, add_generation_prompt: bool = True) -> str:
    """The prompt text for `messages`, ending with the assistant's turn header when `add_generation_prompt`."""
    if not tokenizer.chat_template:
        raise ValueError("the base model's tokenizer has no chat template; use /v1/completions with a plain prompt")
    rendered = tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=add_generation_prompt
    )
    return str(rendered)
