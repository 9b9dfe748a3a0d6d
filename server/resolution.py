"""Which model a request's `model` field names: the base, or one of the adapters served over it."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from server.engine import LoraTarget
from server.errors import ModelNotFoundError

ADAPTER_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class ServedModel:
    """What a request resolved to: the name responses report, and the adapter to apply (None for the base)."""

    name: str
    lora: LoraTarget | None
    created: int


class StaticAdapterError(ValueError):
    """An adapter given on the command line cannot be served; the message names it."""


class ModelResolver:
    """The base model plus the adapters named at start-up (`--adapter NAME=PATH`)."""

    def __init__(self, base_name: str, adapters: dict[str, Path]) -> None:
        now = int(time.time())
        self.base = ServedModel(base_name, None, now)
        self._models = {base_name: self.base}
        for int_id, (name, path) in enumerate(sorted(adapters.items()), start=1):
            if not ADAPTER_NAME.match(name):
                raise StaticAdapterError(f"adapter name {name!r} must match {ADAPTER_NAME.pattern}")
            if name == base_name:
                raise StaticAdapterError(f"adapter name {name!r} is the base model's served name")
            if not (path / "adapter_config.json").is_file():
                raise StaticAdapterError(f"adapter {name!r}: {path} has no adapter_config.json")
            self._models[name] = ServedModel(name, LoraTarget(name, int_id, str(path.resolve())), now)

    def resolve(self, model: str) -> ServedModel:
        try:
            return self._models[model]
        except KeyError:
            raise ModelNotFoundError(model) from None

    def servable(self) -> list[ServedModel]:
        return list(self._models.values())
