"""Adapter and alias names, and the `model` strings that address them.

`NAME` (its `prod` alias if set, else its newest active version), `NAME@VERSION` and `NAME:ALIAS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from adapters.errors import InvalidNameError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
DEFAULT_ALIAS = "prod"
CANDIDATE_ALIAS = "candidate"
"""Where `loradock retrain` registers a new version, waiting for `loradock promote`."""
SHADOW_ALIAS = "shadow"
"""While set, that version answers copies of the adapter's live traffic (never returned), for comparison."""


def check_name(name: str, what: str = "adapter name") -> str:
    if not NAME_PATTERN.match(name):
        raise InvalidNameError(
            f"{what} {name!r} is not allowed: use 1-64 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass(frozen=True, slots=True)
class ModelRef:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        if self.alias is not None:
            return f"{self.name}:{self.alias}"
        return self.name


def parse_model_ref(text: str) -> ModelRef | None:
    """The adapter a `model` string addresses, or None when it cannot name one."""
    name, at, version = text.partition("@")
    if at:
        if not (NAME_PATTERN.match(name) and version.isdigit() and int(version) > 0):
            return None
        return ModelRef(name, version=int(version))
    name, colon, alias = text.partition(":")
    if colon:
        if not (NAME_PATTERN.match(name) and NAME_PATTERN.match(alias)):
            return None
        return ModelRef(name, alias=alias)
    return ModelRef(name) if NAME_PATTERN.match(name) else None
