"""Start-up failures of a real `loradock serve` process: each is refused with a clear message and a non-zero exit.
(Its drain on SIGTERM is checked on a replica, in `test_replicas_and_auth.py`, as part of a rolling restart.)"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from adapters.fingerprint import BaseModelSpec
from tests.adapter_factory import write_adapter
from tests.helpers import LORADOCK, ServerProcess, free_port

pytestmark = pytest.mark.integration


def serve_refused(home: Path, *args: str, port: int | None = None) -> subprocess.CompletedProcess[str]:
    """`loradock serve ARGS`, expected to be refused before it loads anything: a free port unless `port` is given."""
    done = subprocess.run(
        [str(LORADOCK), "serve", "--port", str(port or free_port()), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={"LORADOCK_HOME": str(home), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 2, done.stderr
    return done


def test_missing_base_model_folder_fails_fast_with_a_clear_message(loradock_home: Path) -> None:
    assert "/no/such/model" in serve_refused(loradock_home, "--base-model", "/no/such/model").stderr


def test_bad_adapter_spec_is_refused_before_loading(loradock_home: Path, demo_model: Path, tmp_path: Path) -> None:
    done = serve_refused(loradock_home, "--base-model", str(demo_model), "--adapter", f"x={tmp_path}")
    assert "adapter_config.json" in done.stderr


def test_model_folder_without_weights_is_refused_before_loading(loradock_home: Path, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama", "architectures": ["LlamaForCausalLM"]}')
    assert "no .safetensors weights" in serve_refused(loradock_home, "--base-model", str(tmp_path)).stderr


def test_a_taken_port_is_refused_before_the_hub_is_touched(
    demo_model: Path, demo_base: BaseModelSpec, tmp_path: Path
) -> None:
    """uvicorn binds only after the app's startup has set the engine loading: the process used to stay up until the
    engine was built, with `--adapter` already registered."""
    home = tmp_path / "home"
    adapter = write_adapter(tmp_path / "adapter", demo_base, seed=3)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = serve_refused(home, "--base-model", str(demo_model), "--adapter", f"x={adapter}", port=port)
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "in use" in done.stderr
    assert not home.exists() or not any(home.iterdir()), "the hub was opened"


def launch(request: pytest.FixtureRequest) -> Iterator[ServerProcess]:
    """A server over a folder that looks like a model to loradock but whose weights vLLM cannot load
    (`tests/early_start.py`)."""
    broken = request.getfixturevalue("tmp_path_factory").mktemp("broken-model")
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
    server = ServerProcess(broken.parent / f"{broken.name}-home", ["--base-model", str(broken)])
    try:
        yield server
    finally:
        server.terminate()


def test_engine_that_cannot_load_the_model_exits_non_zero(launched: ServerProcess) -> None:
    server = launched
    deadline = time.monotonic() + 120
    while server.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.5)
    assert server.process.returncode == 1, server.log_tail()
    assert "failed to start" in server.log_tail()
