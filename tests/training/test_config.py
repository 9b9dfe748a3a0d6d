"""Training configuration: every shipped config loads, and mistakes name the setting to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO
from training.config import ConfigError, load_config

SHIPPED = sorted((REPO / "training" / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=[path.stem for path in SHIPPED])
def test_every_shipped_config_loads_and_is_headed_by_its_command(path: Path) -> None:
    config = load_config(path, {})
    assert config.data.train_file
    assert path.read_text().startswith("# loradock train --config training/configs/" + path.name)


def test_overrides_and_defaults() -> None:
    config = load_config(None, {"lora.r": "32", "epochs": "2", "data.split": [0.8, 0.1, 0.1], "bf16": "false"})
    assert (config.lora.r, config.epochs, config.data.split, config.bf16) == (32, 2.0, (0.8, 0.1, 0.1), False)
    assert config.learning_rate == 2e-4 and config.lora.target_modules == "all-linear"


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"lora.rank": 4}, "lora.rank"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr_scheduler": "step"}, "lr_scheduler"),
        ({"data.shape": "tables"}, "data.shape"),
        ({"save_every": 30, "eval_every": 20}, "save_every"),
        ({"epochs": "many"}, "epochs"),
    ],
)
def test_mistakes_name_the_setting(overrides: dict, names: str) -> None:
    with pytest.raises(ConfigError, match=names.split(".")[0]):
        load_config(None, overrides)


def test_bad_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml", {})
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(listed, {})
