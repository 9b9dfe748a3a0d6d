"""What `loradock retrain` trains with: prod's own settings, the new data, and where the weights start."""

from __future__ import annotations

from pathlib import Path

import yaml

from adapters.hub import Hub
from adapters.settings import Settings
from adapters.sources import stage_source
from tests.adapter_factory import write_adapter
from tests.adapters.synthetic import synthetic_base
from training.retrain import RetrainOptions, retrain_config

DEMO_CONFIG = Path(__file__).parents[2] / "training/configs/demo_support_tickets.yaml"


def test_a_retrain_continues_from_prod_or_starts_fresh_with_prods_settings_and_the_new_data(tmp_path: Path) -> None:
    prod_run = tmp_path / "prod-run"
    prod_run.mkdir()
    (prod_run / "config.yaml").write_text(DEMO_CONFIG.read_text())
    base = synthetic_base()
    hub = Hub.open(Settings(home=tmp_path / "home"))
    try:
        staged = stage_source(hub.store, str(write_adapter(tmp_path / "src", base, seed=1)), hub.registry.limits)
        hub.registry.register("tickets", staged, base, created_by="t", metadata={"run_dir": str(prod_run)})
        prod = hub.registry.get_version("tickets", 1)
    finally:
        hub.close()
    original = {"train": "train.jsonl", "validation": "validation.jsonl", "test": "test.jsonl"}
    feedback = tmp_path / "feedback.jsonl"
    for run in ("r1", "r2"):
        (tmp_path / run).mkdir()

    continued = retrain_config(prod, original, RetrainOptions("tickets"), feedback, tmp_path / "r1")
    assert continued.init_from == "tickets@1"
    demo = yaml.safe_load(DEMO_CONFIG.read_text())
    assert (continued.learning_rate, continued.lora.r) == (demo["learning_rate"], demo["lora"]["r"])
    assert continued.data.train_file == str(feedback) and continued.data.validation_file == "validation.jsonl"
    assert continued.data.test_file is None and not continued.evaluate
    assert (continued.max_steps, continued.epochs) == (-1, 2.0)
    assert continued.output_dir == str(tmp_path / "r1" / "run")

    fresh = retrain_config(
        prod,
        original,
        RetrainOptions("tickets", from_scratch=True, overrides={"max_steps": 1}),
        feedback,
        tmp_path / "r2",
    )
    assert fresh.init_from is None and fresh.max_steps == 1
    assert fresh.learning_rate == demo["learning_rate"]
