"""The production loop end to end on the demo adapter: real traffic through the server, feedback correcting a
systematic error, `loradock retrain`, its comparison with prod, promotion and rollback."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from adapters.hub import Hub
from adapters.interactions import LEARNED_FROM
from adapters.naming import CANDIDATE_ALIAS, DEFAULT_ALIAS
from adapters.promotion import COMPARISON
from adapters.settings import Settings
from tests.helpers import ServerProcess, run_loradock
from training.demo_loop import send_and_rate, traffic

pytestmark = pytest.mark.slow

ADAPTER = "support-tickets"


def _loradock(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LORADOCK_HOME": str(home), "COLUMNS": "200"}
    return run_loradock(args, env, timeout=1200)


def _served_as(server: ServerProcess, expected: str, timeout_s: float = 30) -> str:
    """The version that `support-tickets` resolves to on the running server (a response names it), polled until
    it is `expected`: the server caches a resolution for a couple of seconds."""
    body = {"model": ADAPTER, "messages": [{"role": "user", "content": "My invoice is wrong."}], "max_tokens": 1}
    deadline = time.monotonic() + timeout_s
    while True:
        served = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60).json()["model"]
        if served == expected or time.monotonic() > deadline:
            return str(served)
        time.sleep(0.5)


def _aliases(home: Path) -> dict[str, list[int]]:
    hub = Hub.open(Settings(home=home))
    try:
        adapter = hub.registry.get_adapter(ADAPTER)
        return {alias.name: [target.version for target in alias.targets] for alias in adapter.aliases}
    finally:
        hub.close()


def test_retrain_on_corrections_fixes_the_error_and_is_promoted_and_rolled_back_without_a_restart(
    demo_training: tuple[Path, Path], demo_hub_server: ServerProcess
) -> None:
    """On the demo hub, as `make demo` runs the loop: the server keeps serving while the adapter is retrained. A
    candidate's gates refusing it is checked on the store (`tests/adapters/test_production_loop_store.py`), and
    `--from-scratch` in `tests/training/test_retrain_config.py`: a second retrain here took about 75 s."""
    home = demo_training[0]
    counts = send_and_rate(demo_hub_server.url, traffic(break_ins=48, ordinary=16, seed=3))
    assert counts["wrong (corrected)"] >= 30, counts  # the systematic error: calm break-ins are not urgent to v1

    done = _loradock(home, "retrain", ADAPTER)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    hub = Hub.open(Settings(home=home))
    try:
        candidate = hub.registry.get_version(ADAPTER, 2)
    finally:
        hub.close()
    sets = candidate.metadata[COMPARISON]["sets"]
    held_out, original = sets["held_out_feedback"], sets["original_test"]
    assert held_out["count"] >= 5 and original["count"] >= 50
    assert held_out["prod"] <= 0.2 and held_out["candidate"] >= held_out["prod"] + 0.5, sets
    # Replay keeps most of the original skill; how much varies between runs on the CPU (0.90 to 0.98 from 0.98 seen).
    assert original["candidate"] >= original["prod"] - 0.1, sets
    learned = candidate.metadata[LEARNED_FROM]
    assert 0 < len(learned["interactions"]) <= counts.total() - held_out["count"]
    assert len(learned["feedback"]) == len(learned["interactions"])  # one rating per completion here
    assert candidate.metadata["parent"] == f"{ADAPTER}@1"
    assert _aliases(home)[CANDIDATE_ALIAS] == [2]

    promoted = _loradock(home, "promote", ADAPTER, "--margin", "0.1")
    assert promoted.returncode == 0 and "promoted" in promoted.stdout, promoted.stdout
    assert _aliases(home)[DEFAULT_ALIAS] == [2]
    assert _served_as(demo_hub_server, f"{ADAPTER}@2") == f"{ADAPTER}@2"  # no restart

    back = _loradock(home, "rollback", ADAPTER)
    assert back.returncode == 0, back.stdout
    assert _aliases(home)[DEFAULT_ALIAS] == [1]
    assert _served_as(demo_hub_server, f"{ADAPTER}@1") == f"{ADAPTER}@1"
