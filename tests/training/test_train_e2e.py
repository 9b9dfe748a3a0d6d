"""`loradock train` end to end on a tiny model: data file to served adapter, resume, refusals, parity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import openai
import pytest
from safetensors.numpy import load_file

from adapters.datafiles.shapes import Example
from adapters.hub import Hub
from adapters.settings import Settings
from server.prompts import PromptBuilder, chat_messages
from server.protocol import ChatMessage
from tests.helpers import LORADOCK, ServerProcess, run_loradock
from training.data.tokenize import IGNORE, encode
from training.demo_task import write_dataset

pytestmark = pytest.mark.integration

QUICK = ["--set", "lora.r=8", "--set", "data.max_seq_len=256", "--set", "batch_size=4"]


def train(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LORADOCK_HOME": str(home), "COLUMNS": "200"}
    done = run_loradock(["train", *args], env, timeout=600)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def test_data_file_to_registered_adapter_served_by_the_real_server(tiny_model: Path, tmp_path: Path) -> None:
    """The server is up before training, as in production: it serves what training registers without a restart."""
    home = tmp_path / "home"
    server = ServerProcess(home, ["--base-model", str(tiny_model)])
    try:
        trained_and_served(server, tiny_model, tmp_path)
    finally:
        server.terminate()


def trained_and_served(server: ServerProcess, tiny_model: Path, tmp_path: Path) -> None:
    home = server.home
    data = write_dataset(tmp_path / "tickets.jsonl", count=240)
    run = tmp_path / "run"
    done = train(
        home,
        "--base-model",
        str(tiny_model),
        "--data",
        str(data),
        "--output-dir",
        str(run),
        "--register",
        "tiny-tickets",
        "--set",
        "max_steps=8",
        "--set",
        "eval_every=4",
        "--set",
        "save_every=4",
        "--set",
        "eval_max_new_tokens=16",
        *QUICK,
    )
    assert "registered tiny-tickets@1" in done.stdout
    for produced in (
        "config.yaml",
        "metrics.jsonl",
        "run.json",
        "eval_report.md",
        "eval_report.json",
        "curves.png",
        "data/train.jsonl",
        "data/dataset_card.md",
        "adapter/adapter_model.safetensors",
        "adapter/loradock-adapter.json",
        "adapter/README.md",
    ):
        assert (run / produced).is_file(), produced
    record = json.loads((run / "run.json").read_text())
    assert record["steps"] == 8 and record["evaluation"]["tuned"]["task"]["count"] > 0
    hub = Hub.open(Settings(home=home))
    version = hub.registry.get_version("tiny-tickets", 1)
    profile = hub.drift.load_profile(version.lora_id)
    hub.close()
    assert version.source.kind == "training"
    # the drift reference: the training split's prompts and answers
    assert profile is not None and profile.source == "training-data"
    assert profile.prompts == version.metadata["splits"]["train"] and profile.answers == profile.prompts
    assert version.metadata["run_id"] == run.name and version.metadata["dataset_sha256"] == record["dataset_sha256"]
    assert version.metadata["manifest"]["contract"]["eos_token"] == "<|im_end|>"
    continued = tmp_path / "continued"
    train(
        home,
        "--base-model",
        str(tiny_model),
        "--data",
        str(data),
        "--output-dir",
        str(continued),
        "--register",
        "tiny-tickets",
        "--set",
        "init_from=tiny-tickets@1",
        "--set",
        "max_steps=2",
        "--set",
        "evaluate=false",
        *QUICK,
    )
    hub = Hub.open(Settings(home=home))
    second = hub.registry.get_version("tiny-tickets", 2)
    hub.close()
    assert second.metadata["parent"] == "tiny-tickets@1"
    server.wait_ready()
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)
    for model in ("tiny-tickets@1", "tiny-tickets"):
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "My order #123 is late."}], max_tokens=8
        )
        assert reply.model == ("tiny-tickets@1" if model.endswith("@1") else "tiny-tickets@2")


def _adapter_tensors(run: Path) -> dict[str, Any]:
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


def test_a_killed_run_resumes_to_the_same_weights(tiny_model: Path, tmp_path: Path) -> None:
    """In float32: on a CPU with AMX, bfloat16's kernels give one of a few results from one process to the next
    (two uninterrupted runs differed by 2.6e-4 after these 30 steps, against 6e-7 in float32), while a resume that
    lost its random state or its optimizer's moments is off by 1e-3 or more in either precision."""
    data = write_dataset(tmp_path / "tickets.jsonl", count=400)
    common = [
        "--set",
        "bf16=false",
        "--base-model",
        str(tiny_model),
        "--data",
        str(data),
        "--set",
        "max_steps=30",
        "--set",
        "save_every=10",
        "--set",
        "eval_every=10",
        "--set",
        "evaluate=false",
        "--set",
        "early_stopping_patience=null",
        *QUICK,
    ]
    train(tmp_path / "home", *common, "--output-dir", str(tmp_path / "straight"))
    interrupted = tmp_path / "interrupted"
    env = {**os.environ, "LORADOCK_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(
        [str(LORADOCK), "train", *common, "--output-dir", str(interrupted)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (interrupted / "checkpoints" / "checkpoint-10" / "trainer_state.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (interrupted / "adapter").exists()
    train(tmp_path / "home", "--output-dir", str(interrupted), "--resume")
    straight, resumed = (json.loads((tmp_path / run / "run.json").read_text()) for run in ("straight", "interrupted"))
    assert straight["steps"] == resumed["steps"] == 30
    expected, got = _adapter_tensors(tmp_path / "straight"), _adapter_tensors(interrupted)
    assert expected.keys() == got.keys()
    worst = max(float(abs(expected[key] - got[key]).max()) for key in expected)
    assert worst < 1e-4, f"resumed weights differ from the uninterrupted run by up to {worst}"


def test_bad_data_is_refused_with_line_numbers_and_nothing_is_trained(tiny_model: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"prompt": "a", "completion": "b"})
    bad.write_bytes(f"{good}\n{{not json\n".encode() + b'{"prompt": "\xff", "completion": "x"}\n' + b'{"prompt": 3}\n')
    done = train(
        tmp_path / "home",
        "--base-model",
        str(tiny_model),
        "--data",
        str(bad),
        "--output-dir",
        str(tmp_path / "run"),
        "--register",
        "never",
        check=False,
    )
    assert done.returncode == 1
    for line in (
        "bad.jsonl:2: malformed JSON",
        "bad.jsonl:3: not UTF-8",
        "bad.jsonl:4: field 'prompt' must be a string",
    ):
        assert line in done.stdout, done.stdout
    assert not (tmp_path / "run" / "adapter").exists() and not (tmp_path / "run" / "checkpoints").exists()
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    done = train(tmp_path / "home", "--base-model", str(tiny_model), "--data", str(empty), check=False)
    assert done.returncode == 1 and "the file is empty" in done.stdout


def test_training_renders_exactly_the_prompt_the_server_sends(demo_tokenizer: Any) -> None:
    """The tokens before the last answer in training are the tokens the server generates after, for the same chat."""
    conversations = [
        [("user", "What is the capital of France?"), ("assistant", "Paris.")],
        [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!")],
        [("user", "2+2?"), ("assistant", "4"), ("user", "and 3+3?"), ("assistant", "6")],
    ]
    builder = PromptBuilder(demo_tokenizer, 2048)
    try:
        for turns in conversations:
            trained = encode(demo_tokenizer, Example(1, messages=tuple(turns)))
            last_answer = max(
                i
                for i in range(1, len(trained.labels))
                if trained.labels[i] != IGNORE and trained.labels[i - 1] == IGNORE
            )
            request = [ChatMessage(role=role, content=content) for role, content in turns[:-1]]
            served = builder._encode_chat(chat_messages(request))
            assert trained.input_ids[:last_answer] == served
    finally:
        builder.close()
