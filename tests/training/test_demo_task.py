"""The shipped demo task on SmolLM2 (3 to 8 minutes on 2 cores): from near zero to at least 0.8. Its duration is
recorded in run.json, not asserted: speed is for benchmarks, not tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_demo_task_lifts_the_held_out_metric_from_near_zero_to_above_0_8(demo_training: tuple[Path, Path]) -> None:
    _, run = demo_training
    record = json.loads((run / "run.json").read_text())
    evaluation = record["evaluation"]
    main = evaluation["main_metric"]
    assert main == "json_all_fields"
    assert evaluation["tuned"]["task"][main] >= 0.8, evaluation["tuned"]["task"]
    assert evaluation["base"]["task"][main] <= 0.1, evaluation["base"]["task"]
    assert abs(evaluation["forgetting"]["relative_change"]) < 0.25  # general text barely moves
    assert record["registered"] == "support-tickets@1"
