"""Servers started while the module before theirs runs.

A server takes 45 to 55 s to be ready on 2 cores, most of it one core importing vLLM in three processes one after
the other, while most test modules leave the other core idle. So a module with servers of its own defines
`launch(request)`: a generator that starts its processes without waiting for them, yields them, and stops them
when it resumes. As each module begins, the next module of the session whose selected tests use `launched` has
its `launch` run, so that its servers start alongside; there the `launched` fixture takes what was started (or
launches it then, when nothing was) and the module's own fixtures wait for readiness.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from types import ModuleType
from typing import Any

import pytest

FIXTURE = "launched"
"""The fixture through which a module takes what its `launch` started."""

Launch = Callable[[pytest.FixtureRequest], Iterator[Any]]


class EarlyStarts:
    """What each module's `launch` started, until that module takes it; what is never taken is stopped at the end
    of the session."""

    def __init__(self) -> None:
        self._started: dict[str, tuple[Any, ExitStack]] = {}

    def start(self, module: ModuleType, request: pytest.FixtureRequest) -> None:
        """Run `module.launch` unless it has run already; `request` reaches the session fixtures it needs."""
        if module.__name__ in self._started:
            return
        stack = ExitStack()
        launch: Launch = module.launch
        try:
            started = stack.enter_context(contextmanager(launch)(request))
        except Exception as error:  # raised again where the module takes it, not in the module that launched it
            stack.close()
            started = error
        self._started[module.__name__] = (started, stack)

    def take(self, request: pytest.FixtureRequest) -> Any:
        """What the requesting module's `launch` started, now or before; it is stopped when the module ends."""
        self.start(request.module, request)
        started, stack = self._started.pop(request.module.__name__)
        request.addfinalizer(stack.close)
        if isinstance(started, Exception):
            raise started
        return started

    def close(self) -> None:
        while self._started:
            _, (_, stack) = self._started.popitem()
            stack.close()


def next_launching_module(items: Sequence[pytest.Item], current: ModuleType) -> ModuleType | None:
    """The first module after `current`, in the session's order, with a selected test that uses `launched`."""
    seen_current = False
    for item in items:
        module: ModuleType | None = getattr(item, "module", None)
        if module is current:
            seen_current = True
        elif seen_current and module is not None and FIXTURE in getattr(item, "fixturenames", ()):
            return module
    return None
