"""Start-up and shut-down of a real `loradock serve` process: readiness, drain on SIGTERM, clear failures."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from tests.helpers import LORADOCK, BackgroundStream, ServerProcess

pytestmark = pytest.mark.integration


def test_sigterm_drains_in_flight_streams_then_exits_cleanly(
    tmp_path: Path, demo_model: Path, test_adapters: dict[str, Path]
) -> None:
    server = ServerProcess(tmp_path, ["--base-model", str(demo_model), "--adapter", f"alpha={test_adapters['alpha']}"])
    try:
        server.wait_ready()
        story = [{"role": "user", "content": "Tell me a long story."}]
        stream = BackgroundStream(server.url, {"model": "alpha", "messages": story, "max_tokens": 64})
        assert stream.wait_started()
        server.process.send_signal(signal.SIGTERM)
        events = stream.finish()
        exit_code = server.process.wait(60)
    finally:
        server.terminate()
    assert events[-1] == "data: [DONE]", server.log_tail()
    finish = [json.loads(e[6:])["choices"][0].get("finish_reason") for e in events[1:-1] if '"finish_reason"' in e]
    assert finish and finish[-1] in {"stop", "length"}
    # uvicorn re-raises the SIGTERM it caught once shutdown is complete, so the process ends "by SIGTERM".
    assert exit_code in (0, -signal.SIGTERM), server.log_tail()
    assert "Application shutdown complete" in server.log_tail()


def test_missing_base_model_folder_fails_fast_with_a_clear_message(loradock_home: Path) -> None:
    done = subprocess.run(
        [str(LORADOCK), "serve", "--base-model", "/no/such/model"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"LORADOCK_HOME": str(loradock_home), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "/no/such/model" in done.stderr


def test_bad_adapter_spec_is_refused_before_loading(loradock_home: Path, demo_model: Path, tmp_path: Path) -> None:
    done = subprocess.run(
        [str(LORADOCK), "serve", "--base-model", str(demo_model), "--adapter", f"x={tmp_path}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"LORADOCK_HOME": str(loradock_home), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "adapter_config.json" in done.stderr


def test_model_folder_without_weights_is_refused_before_loading(loradock_home: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    done = subprocess.run(
        [str(LORADOCK), "serve", "--base-model", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"LORADOCK_HOME": str(loradock_home), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2
    assert "no .safetensors weights" in done.stderr


def test_engine_that_cannot_load_the_model_exits_non_zero(loradock_home: Path, tmp_path: Path) -> None:
    """A folder that looks like a model to loradock but whose weights vLLM cannot load."""
    broken = tmp_path / "broken-model"
    broken.mkdir()
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
        "vocab_size": 32,
    }
    (broken / "config.json").write_text(json.dumps(config))
    save_file(
        {"model.layers.0.self_attn.q_proj.weight": np.zeros((8, 8), np.float32)}, str(broken / "model.safetensors")
    )
    server = ServerProcess(tmp_path, ["--base-model", str(broken)])
    try:
        deadline = time.monotonic() + 120
        while server.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert server.process.returncode == 1, server.log_tail()
        assert "failed to start" in server.log_tail()
    finally:
        server.terminate()
