"""The shipped demo task on SmolLM2 (about 8 minutes on 2 cores): from near zero to at least 0.8."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import LORADOCK, REPO

pytestmark = pytest.mark.slow


def test_demo_task_lifts_the_held_out_metric_from_near_zero_to_above_0_8(demo_model: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    done = subprocess.run(
        [
            str(LORADOCK),
            "train",
            "--config",
            str(REPO / "training/configs/demo_support_tickets.yaml"),
            "--base-model",
            str(demo_model),
            "--output-dir",
            str(run),
            "--register",
            "support-tickets",
        ],
        env={**os.environ, "LORADOCK_HOME": str(tmp_path / "home"), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((run / "run.json").read_text())
    evaluation = record["evaluation"]
    main = evaluation["main_metric"]
    assert main == "json_all_fields"
    assert evaluation["tuned"]["task"][main] >= 0.8, evaluation["tuned"]["task"]
    assert evaluation["base"]["task"][main] <= 0.1, evaluation["base"]["task"]
    assert abs(evaluation["forgetting"]["relative_change"]) < 0.25  # general text barely moves
    assert record["registered"] == "support-tickets@1"
    assert record["seconds"] < 600
