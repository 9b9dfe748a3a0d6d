"""The test suite's early starts (`tests/early_start.py`): which module's servers start next, and that what a
module's `launch` started is stopped once, whether the module takes it or not."""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.early_start import EarlyStarts, next_launching_module


def module(name: str, events: list[str] | None = None, *, fails: bool = False) -> ModuleType:
    made = ModuleType(name)

    def launch(request: Any) -> Iterator[str]:
        if fails:
            raise RuntimeError(f"{name} cannot start")
        assert events is not None
        events.append(f"start {name}")
        yield f"{name} servers"
        events.append(f"stop {name}")

    made.launch = launch  # type: ignore[attr-defined]
    return made


def item(of: ModuleType, *fixtures: str) -> Any:
    return SimpleNamespace(module=of, fixturenames=list(fixtures))


def test_the_next_module_is_the_first_later_one_whose_selected_tests_use_launched() -> None:
    first, plain, unused, serving, last = (module(name) for name in ("first", "plain", "unused", "serving", "last"))
    items = [
        item(first, "launched"),
        item(plain, "tmp_path"),
        item(unused),  # defines launch, but none of its selected tests takes it
        item(serving, "tmp_path"),
        item(serving, "launched"),
        item(last, "launched"),
    ]
    assert next_launching_module(items, first) is serving
    assert next_launching_module(items, plain) is serving
    assert next_launching_module(items, serving) is last
    assert next_launching_module(items, last) is None


class Request(SimpleNamespace):
    def addfinalizer(self, finalizer: Any) -> None:
        self.finalizers.append(finalizer)


def test_started_once_taken_by_its_module_and_stopped_with_it_or_with_the_session() -> None:
    events: list[str] = []
    early, late = module("early", events), module("late", events)
    starts = EarlyStarts()
    starts.start(early, Request())
    starts.start(early, Request())  # a second look-ahead does not start it again
    starts.start(late, Request())
    request = Request(module=early, finalizers=[])
    assert starts.take(request) == "early servers"
    assert events == ["start early", "start late"]
    for finalizer in request.finalizers:  # the module ends
        finalizer()
    assert events[-1] == "stop early"
    starts.close()  # the session ends: `late` was never taken
    assert events == ["start early", "start late", "stop early", "stop late"]


def test_a_launch_that_fails_fails_the_module_that_takes_it() -> None:
    broken = module("broken", fails=True)
    starts = EarlyStarts()
    starts.start(broken, Request())  # raised here, in another module's set-up, it would blame that module
    with pytest.raises(RuntimeError, match="broken cannot start"):
        starts.take(Request(module=broken, finalizers=[]))
