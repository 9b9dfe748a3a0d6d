"""Redaction of personal data in logged interactions: e-mail addresses, phone and card numbers by default.

Written by hand on purpose: the field's library (Microsoft Presidio) needs a spaCy language model downloaded at
run time, and these three kinds are well served by patterns plus a Luhn check (which keeps order numbers and
the like from being taken for card numbers).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
PHONE = re.compile(r"(?<![\w+])\+?\(?\d[\d\s().-]{6,}\d(?!\w)")


def luhn_valid(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", match.group())
    return "[CARD]" if 13 <= len(digits) <= 19 and luhn_valid(digits) else None


def _phone(match: re.Match[str]) -> str | None:
    digits = re.sub(r"\D", "", match.group())
    return "[PHONE]" if 9 <= len(digits) <= 15 else None


def _fixed(placeholder: str) -> Callable[[re.Match[str]], str | None]:
    return lambda _match: placeholder


@dataclass
class Redactor:
    """Replaces each match with its placeholder; custom patterns (name -> regex) run after the defaults."""

    defaults: bool = True
    custom: Mapping[str, str] = field(default_factory=dict)
    _rules: list[tuple[re.Pattern[str], Callable[[re.Match[str]], str | None]]] = field(init=False)

    def __post_init__(self) -> None:
        self._rules = []
        if self.defaults:
            # Cards before phones: a card number also looks like a long phone number.
            self._rules += [(EMAIL, lambda _m: "[EMAIL]"), (CARD, _card), (PHONE, _phone)]
        for name, pattern in self.custom.items():
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"redaction pattern {name!r} is not a valid regular expression: {exc}") from exc
            self._rules.append((compiled, _fixed(f"[{name.upper()}]")))

    def text(self, value: str) -> tuple[str, int]:
        """The redacted text and how many spans were replaced."""
        count = 0
        for pattern, replace in self._rules:

            def substitute(match: re.Match[str], replace: Callable[[re.Match[str]], str | None] = replace) -> str:
                nonlocal count
                replacement = replace(match)
                if replacement is None:
                    return match.group()
                count += 1
                return replacement

            value = pattern.sub(substitute, value)
        return value, count

    def value(self, value: Any) -> tuple[Any, int]:
        """Every string inside `value` (nested lists and dicts, e.g. chat messages) redacted."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, list):
            pairs = [self.value(item) for item in value]
            return [item for item, _ in pairs], sum(count for _, count in pairs)
        if isinstance(value, dict):
            redacted, total = {}, 0
            for key, item in value.items():
                redacted[key], count = self.value(item)
                total += count
            return redacted, total
        return value, 0
