"""Settings validation and base-model resolution (pure logic, no engine)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from adapters.base_models import MODEL_MANIFEST, list_local_models, resolve_base_model, served_name_for
from adapters.settings import Settings


def test_settings_read_loradock_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LORADOCK_HOME", str(tmp_path))
    monkeypatch.setenv("LORADOCK_MAX_LORAS", "8")
    monkeypatch.setenv("LORADOCK_MAX_CPU_LORAS", "64")
    settings = Settings()
    assert settings.home == tmp_path.resolve()
    assert settings.max_loras == 8
    assert settings.models_dir == tmp_path.resolve() / "models"


def test_settings_refuse_inconsistent_lora_capacity() -> None:
    with pytest.raises(ValidationError, match="max_cpu_loras"):
        Settings(max_loras=8, max_cpu_loras=4)


def test_settings_refuse_out_of_range_values() -> None:
    with pytest.raises(ValidationError, match="max_model_len"):
        Settings(max_model_len=0)


def _model(folder: Path, manifest: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    if manifest is not None:
        (folder / MODEL_MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_resolve_base_model_prefers_folders_then_local_names_then_hub_ids(tmp_path: Path) -> None:
    models = tmp_path / "models"
    local = _model(models / "Tiny")
    assert resolve_base_model(str(local), models) == str(local)
    assert resolve_base_model("Tiny", models) == str(local)
    assert resolve_base_model("HuggingFaceTB/SmolLM2-135M-Instruct", models) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_base_model("./not/here", models)
    assert served_name_for("/x/y/Tiny/") == "Tiny"
    assert served_name_for("org/name") == "name"


def test_list_local_models_skips_incomplete_folders(tmp_path: Path) -> None:
    models = tmp_path / "models"
    _model(models / "B", manifest={"source": "pypi:x"})
    _model(models / "A")
    (models / ".partial" / "half").mkdir(parents=True)
    (models / "no-config").mkdir()
    listed = list_local_models(models)
    assert [m.name for m in listed] == ["A", "B"]
    assert listed[1].source == "pypi:x"
