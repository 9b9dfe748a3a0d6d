"""The dataset shapes loradock trains on, detected or declared, normalized into one `Example` type.

- `messages`: OpenAI chat format, ending with the assistant's turn
- `prompt_completion`: {"prompt", "completion"}
- `instruction`: {"instruction", "input" (optional), "output"} (Alpaca)
- `classification`: {"text", "label"}, rendered as a chat whose answer is the label
- `text`: {"text"}, plain text for continued pre-training on a domain (loss on every token)
- `preference`: {"prompt", "chosen", "rejected"} (TRL), or OpenAI's DPO format {"input": {"messages"},
  "preferred_output", "non_preferred_output"}; for DPO, and SFT trains on the chosen answer
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.datafiles.readers import DataError, Refusal, Row

Shape = Literal["messages", "preference", "prompt_completion", "instruction", "classification", "text"]
SHAPES: tuple[Shape, ...] = ("messages", "preference", "prompt_completion", "instruction", "classification", "text")
_REQUIRED: dict[Shape, tuple[str, ...]] = {
    "messages": ("messages",),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt_completion": ("prompt", "completion"),
    "instruction": ("instruction", "output"),
    "classification": ("text", "label"),
    "text": ("text",),
}
ROLES = ("system", "user", "assistant")
OPENAI_DPO_KEYS = ("input", "preferred_output", "non_preferred_output")


@dataclass(frozen=True)
class Example:
    """One training example: a chat ending with the answer to learn, or plain text."""

    line: int
    messages: tuple[tuple[str, str], ...] = ()
    text: str | None = None
    label: str | None = None
    rejected: str | None = None
    """For preference examples: the answer to prefer less (the last message holds the chosen one)."""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_chat(self) -> bool:
        return bool(self.messages)

    @property
    def prompt(self) -> str:
        """Everything the model is shown (what deduplication and the leakage check compare)."""
        if not self.is_chat:
            return self.text or ""
        return "\n".join(content for role, content in self.messages[:-1] if role != "system")

    @property
    def answer(self) -> str:
        return self.messages[-1][1] if self.is_chat else ""

    def chat(self, *, with_answer: bool = True) -> list[dict[str, str]]:
        turns = self.messages if with_answer else self.messages[:-1]
        return [{"role": role, "content": content} for role, content in turns]

    def to_record(self) -> dict[str, Any]:
        """The example as a JSONL record of the split files (OpenAI chat format, or text)."""
        if self.rejected is not None:
            return {"prompt": self.chat(with_answer=False), "chosen": self.answer, "rejected": self.rejected}
        record: dict[str, Any] = {"messages": self.chat()} if self.is_chat else {"text": self.text}
        if self.label is not None:
            record["label"] = self.label
        return record


def detect_shape(rows: list[Row]) -> Shape:
    """The shape most rows have (the most specific one that fits), or a DataError naming the columns seen."""
    votes: Counter[Shape] = Counter()
    for row in rows:
        for shape in SHAPES:  # most specific first: {"text", "label"} is classification, not text
            keys = _REQUIRED[shape]
            if all(key in row.data for key in keys) or (
                shape == "preference" and all(key in row.data for key in OPENAI_DPO_KEYS)
            ):
                votes[shape] += 1
                break
    if not votes:
        seen = sorted({key for row in rows[:50] for key in row.data})
        raise DataError(
            f"cannot tell the dataset's shape from its fields {seen}; expected one of: "
            + "; ".join(f"{shape} ({', '.join(keys)})" for shape, keys in _REQUIRED.items())
        )
    return votes.most_common(1)[0][0]


def to_examples(rows: list[Row], shape: Shape, system_prompt: str | None) -> tuple[list[Example], list[Refusal]]:
    examples, refused = [], []
    for row in rows:
        try:
            examples.append(_convert(row, shape, system_prompt))
        except _Refused as exc:
            refused.append(Refusal(row.line, str(exc)))
    return examples, refused


class _Refused(ValueError):
    pass


def _string(data: dict[str, Any], key: str, *, optional: bool = False, numbers: bool = False) -> str:
    value = data.get(key)
    if isinstance(value, float) and math.isnan(value):
        value = None  # pandas writes a missing value as NaN, in its Parquet and JSON files alike
    if value is None:
        if optional:
            return ""
        raise _Refused(f"missing field '{key}'")
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        if isinstance(value, float) and math.isinf(value):
            raise _Refused(f"field '{key}' must be a string or a finite number, got {value}")
        return str(value)  # class labels are often written as numbers
    raise _Refused(f"field '{key}' must be a string, got {type(value).__name__}")


def _chat(system_prompt: str | None, user: str, answer: str) -> tuple[tuple[str, str], ...]:
    turns = [("user", user), ("assistant", answer)]
    return tuple([("system", system_prompt), *turns] if system_prompt else turns)


def _convert(row: Row, shape: Shape, system_prompt: str | None) -> Example:
    data = row.data
    if shape == "messages":
        return Example(row.line, messages=_messages(data.get("messages"), system_prompt))
    if shape == "preference":
        return _preference(row, system_prompt)
    if shape == "prompt_completion":
        return Example(row.line, messages=_chat(system_prompt, _string(data, "prompt"), _string(data, "completion")))
    if shape == "instruction":
        task = _string(data, "instruction")
        extra = _string(data, "input", optional=True)
        user = f"{task}\n\n{extra}" if extra.strip() else task
        return Example(row.line, messages=_chat(system_prompt, user, _string(data, "output")))
    if shape == "classification":
        label = _string(data, "label", numbers=True).strip()
        return Example(row.line, messages=_chat(system_prompt, _string(data, "text"), label), label=label)
    return Example(row.line, text=_string(data, "text"))


def _preference(row: Row, system_prompt: str | None) -> Example:
    data = row.data
    if all(key in data for key in OPENAI_DPO_KEYS):
        source = data["input"]
        prompt: Any = source.get("messages") if isinstance(source, dict) else None
        chosen, rejected = _answer(data, "preferred_output"), _answer(data, "non_preferred_output")
    else:
        prompt = data.get("prompt")
        chosen, rejected = _answer(data, "chosen"), _answer(data, "rejected")
    if isinstance(prompt, str):
        turns = _chat(system_prompt, prompt, chosen)
    elif isinstance(prompt, list) and prompt:
        turns = _messages([*prompt, {"role": "assistant", "content": chosen}], system_prompt)
    else:
        where = "input.messages" if all(key in data for key in OPENAI_DPO_KEYS) else "prompt"
        got = "nothing" if prompt is None else _brief(prompt)
        raise _Refused(f"'{where}' must be a string or a non-empty list of messages, got {got}")
    return Example(row.line, messages=turns, rejected=rejected)


def _answer(data: dict[str, Any], key: str) -> str:
    """An answer given as text or as a list holding one assistant message."""
    value = data.get(key)
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0].get("content")
    if not isinstance(value, str):
        raise _Refused(f"field '{key}' must be a string or one assistant message")
    return value


def _messages(value: Any, system_prompt: str | None) -> tuple[tuple[str, str], ...]:
    if value is None:
        raise _Refused("missing field 'messages'")
    if not isinstance(value, list) or not value:
        raise _Refused("'messages' must be a non-empty list")
    turns = []
    for index, message in enumerate(value):
        if not isinstance(message, dict):
            raise _Refused(f"messages[{index}] must be an object")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise _Refused(f"messages[{index}].role must be one of {list(ROLES)}, got {_brief(role)}")
        if not isinstance(content, str):
            raise _Refused(f"messages[{index}].content must be a string, got {type(content).__name__}")
        turns.append((str(role), content))
    if turns[-1][0] != "assistant":
        raise _Refused("the last message must be the assistant's answer")
    if system_prompt and turns[0][0] != "system":
        turns.insert(0, ("system", system_prompt))
    return tuple(turns)


def _brief(value: Any) -> str:
    """A wrong value as a refusal shows it: scalars in short, containers by type (they may be huge or deep)."""
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
        return text if len(text) <= 40 else f"{text[:37]}..."
    return type(value).__name__
