"""The dataset shapes loradock trains on, detected or declared, normalized into one `Example` type.

- `messages`: OpenAI chat format, ending with the assistant's turn
- `prompt_completion`: {"prompt", "completion"}
- `instruction`: {"instruction", "input" (optional), "output"} (Alpaca)
- `classification`: {"text", "label"}, rendered as a chat whose answer is the label
- `text`: {"text"}, plain text for continued pre-training on a domain (loss on every token)
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

from adapters.datafiles.readers import DataError, Refusal, Row

Shape = Literal["messages", "prompt_completion", "instruction", "classification", "text"]
SHAPES: tuple[Shape, ...] = ("messages", "prompt_completion", "instruction", "classification", "text")
_REQUIRED: dict[Shape, tuple[str, ...]] = {
    "messages": ("messages",),
    "prompt_completion": ("prompt", "completion"),
    "instruction": ("instruction", "output"),
    "classification": ("text", "label"),
    "text": ("text",),
}
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Example:
    """One training example: a chat ending with the answer to learn, or plain text."""

    line: int
    messages: tuple[tuple[str, str], ...] = ()
    text: str | None = None
    label: str | None = None
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
        record: dict[str, Any] = {"messages": self.chat()} if self.is_chat else {"text": self.text}
        if self.label is not None:
            record["label"] = self.label
        return record


def detect_shape(rows: list[Row]) -> Shape:
    """The shape most rows have (the most specific one that fits), or a DataError naming the columns seen."""
    votes: Counter[Shape] = Counter()
    for row in rows:
        for shape in SHAPES:  # most specific first: {"text", "label"} is classification, not text
            if all(key in row.data for key in _REQUIRED[shape]):
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
    if value is None:
        if optional:
            return ""
        raise _Refused(f"missing field '{key}'")
    if isinstance(value, str):
        return value
    if numbers and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)  # class labels are often written as numbers
    raise _Refused(f"field '{key}' must be a string, got {type(value).__name__}")


def _chat(system_prompt: str | None, user: str, answer: str) -> tuple[tuple[str, str], ...]:
    turns = [("user", user), ("assistant", answer)]
    return tuple([("system", system_prompt), *turns] if system_prompt else turns)


def _convert(row: Row, shape: Shape, system_prompt: str | None) -> Example:
    data = row.data
    if shape == "messages":
        return Example(row.line, messages=_messages(data.get("messages"), system_prompt))
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
            raise _Refused(f"messages[{index}].role must be one of {list(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise _Refused(f"messages[{index}].content must be a string, got {type(content).__name__}")
        turns.append((str(role), content))
    if turns[-1][0] != "assistant":
        raise _Refused("the last message must be the assistant's answer")
    if system_prompt and turns[0][0] != "system":
        turns.insert(0, ("system", system_prompt))
    return tuple(turns)
