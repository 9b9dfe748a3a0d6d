"""Trainer callbacks of our own (progress bars come from TRL's RichProgressCallback)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


class MetricsLog(TrainerCallback):
    """Every logged metric as one JSON line (step, loss, learning rate, eval_loss, ...), appended across resumes."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:
            return
        with self.path.open("a") as stream:
            stream.write(json.dumps({"step": state.global_step, **logs}) + "\n")
