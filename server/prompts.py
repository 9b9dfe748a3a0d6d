"""Turning request messages and prompts into token ids, with the base model's own tokenizer and template."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from adapters.chat_template import Message, render_chat
from server.errors import ContextLengthExceededError, InvalidRequestError
from server.protocol import ChatMessage


def chat_messages(messages: Sequence[ChatMessage]) -> list[Message]:
    """Plain role/content dicts for the chat template; only text content is accepted."""
    plain = []
    for position, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            texts = []
            for part_index, part in enumerate(content):
                if part.type != "text" or part.text is None:
                    raise InvalidRequestError(
                        f"Content parts of type {part.type!r} are not supported: this model reads text only.",
                        param=f"messages.{position}.content.{part_index}",
                    )
                texts.append(part.text)
            content = "".join(texts)
        # "developer" is OpenAI's newer name for the system role; chat templates know "system".
        role = "system" if message.role == "developer" else message.role
        plain.append({"role": role, "content": content or ""})
    return plain


class PromptBuilder:
    """Renders and tokenizes off the event loop: both are CPU work that would stall every other stream.

    One worker thread, because a Hugging Face fast tokenizer shared between threads can fail with
    "Already borrowed" (vLLM's server serializes its tokenizer calls the same way).
    """

    def __init__(
        self,
        tokenizer: Any,
        max_model_len: int,
        max_prompt_tokens: int | None = None,
        max_output_tokens: int | None = None,
    ) -> None:
        self._tokenizer = tokenizer
        self.max_model_len = max_model_len
        self.max_prompt_tokens = max_prompt_tokens
        self.max_output_tokens = max_output_tokens
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tokenizer")

    async def chat(self, messages: Sequence[ChatMessage]) -> list[int]:
        plain = chat_messages(messages)
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._encode_chat, plain)

    async def text(self, prompt: str) -> list[int]:
        return await asyncio.get_running_loop().run_in_executor(self._worker, self._encode_text, prompt)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)

    def _encode_text(self, prompt: str) -> list[int]:
        return list(self._tokenizer.encode(prompt, add_special_tokens=True))

    def _encode_chat(self, messages: list[Message]) -> list[int]:
        try:
            rendered = render_chat(self._tokenizer, messages)
        except ValueError as exc:
            raise InvalidRequestError(str(exc), param="messages") from exc
        # The template already wrote the special tokens (BOS, turn markers) into the text.
        return list(self._tokenizer.encode(rendered, add_special_tokens=False))

    def max_tokens_for(self, prompt_tokens: int, requested: int | None, prompt_param: str, max_param: str) -> int:
        """The completion budget: what was asked, or what is left of the context (within the server's limits);
        refuse what cannot fit."""
        if self.max_prompt_tokens is not None and prompt_tokens > self.max_prompt_tokens:
            raise ContextLengthExceededError(
                f"This server accepts at most {self.max_prompt_tokens} prompt tokens, "
                f"but your {prompt_param} has {prompt_tokens} tokens.",
                param=prompt_param,
            )
        if self.max_output_tokens is not None and requested is not None and requested > self.max_output_tokens:
            raise InvalidRequestError(
                f"'{max_param}' may be at most {self.max_output_tokens} on this server, got {requested}.",
                param=max_param,
            )
        room = self.max_model_len - prompt_tokens
        if room <= 0:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.max_model_len} tokens, "
                f"but your {prompt_param} has {prompt_tokens} tokens.",
                param=prompt_param,
            )
        if requested is None:
            return room if self.max_output_tokens is None else min(room, self.max_output_tokens)
        if requested > room:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{prompt_tokens + requested} tokens ({prompt_tokens} in the {prompt_param}, {requested} in the "
                "completion). Please reduce the length of the prompt or the completion.",
                param=max_param,
            )
        return requested
