"""Real parts for tests: a `loradock serve` process on a free port, and LoRA adapters made with peft."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

REPO = Path(__file__).resolve().parent.parent
LORADOCK = Path(sys.executable).parent / "loradock"


def run_loradock(args: Sequence[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """`loradock ARGS` with its output captured, in a process group of its own that is killed whole on timeout.

    subprocess.run kills only the command itself: the vLLM engine processes of a timed-out `loradock train` were left
    running (one busy-polled a core for the rest of a suite run and slowed every later test).
    """
    with subprocess.Popen(
        [str(LORADOCK), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    ) as process:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def still_running(process: psutil.Process) -> bool:
    """A zombie has ended: whoever adopted it (PID 1 here) may be slow to reap it."""
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """`loradock serve` in a child process, as users run it; its output goes to a log file for debugging.

    `command` runs another OpenAI-compatible server instead (the benchmarks start vLLM's own this way), with
    `--port PORT` appended before `args` and readiness read from `ready_path`.
    """

    def __init__(
        self,
        home: Path,
        args: Sequence[str],
        env: dict[str, str] | None = None,
        command: Sequence[str] = (str(LORADOCK), "serve"),
        ready_path: str = "/ready",
    ) -> None:
        self.home = home
        self.ready_path = ready_path
        self.env = env or {}
        home.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / f"server-{self.port}.log"
        environment = {**os.environ, "LORADOCK_HOME": str(home), **(env or {})}
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [*command, "--port", str(self.port), *args],
            env=environment,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"server not ready after {timeout_s} s:\n{self.log_tail()}")

    def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM, as an orchestrator sends it; returns the exit code. Whatever is left of its process group
        afterwards is killed: a server stopped while it was still starting exits before vLLM's engine-core process
        (and its worker, in vLLM's pinned-worker layout) does. They stop by themselves once vLLM has built the engine
        (server/engine_process.py), which the next test should not have to wait for."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self._log.close()
        return self.process.returncode

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def make_lora_adapter(
    base_model: Path,
    out: Path,
    *,
    seed: int,
    rank: int = 8,
    target_modules: Sequence[str] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ),
) -> Path:
    """A peft LoRA adapter with random, nonzero A and B, so it changes the base's answers strongly."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_model, dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=list(target_modules),
        init_lora_weights=False,
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    peft_model.save_pretrained(str(out))
    return out


def upload_adapter(
    url: str, name: str, files: Sequence[Path], api_key: str | None = None, metadata: str | None = None
) -> httpx.Response:
    """POST /v1/adapters as a multipart upload, as ops tooling would."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    data = {"name": name, **({"metadata": metadata} if metadata else {})}
    streams = [(path.name, path.open("rb")) for path in files]
    try:
        return httpx.post(
            f"{url}/v1/adapters",
            data=data,
            files=[("file", (filename, stream)) for filename, stream in streams],
            headers=headers,
            timeout=120,
        )
    finally:
        for _, stream in streams:
            stream.close()


def adapter_files(folder: Path) -> list[Path]:
    return sorted(path for path in folder.iterdir() if path.is_file())


class BackgroundStream:
    """A streamed chat completion read in a thread, so a test can act while it is in flight."""

    def __init__(self, url: str, body: dict[str, object], headers: dict[str, str] | None = None) -> None:
        self.events: list[str] = []
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, {**body, "stream": True}, headers or {}))
        self._thread.start()

    def _read(self, url: str, body: dict[str, object], headers: dict[str, str]) -> None:
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120) as response:
            for line in response.iter_lines():
                if line:
                    self.events.append(line)
                    self._started.set()

    def wait_started(self, timeout_s: float = 60) -> bool:
        return self._started.wait(timeout_s)

    def finish(self, timeout_s: float = 120) -> list[str]:
        self._thread.join(timeout_s)
        return self.events


TINY_MODEL_LEN = 2048
"""The tiny model's context (`max_position_embeddings`)."""


def make_tiny_model(tokenizer_source: Path, out: Path, *, seed: int = 0) -> Path:
    """A randomly initialized 2-layer Llama that reuses a real tokenizer and chat template (trains in seconds)."""
    import shutil

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if (out / "config.json").is_file():
        return out
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        vocab_size=49152,
        max_position_embeddings=TINY_MODEL_LEN,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    LlamaForCausalLM(config).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tokenizer_source / name, out / name)
    return out


def toy_llama(vocab_size: int = 97) -> Any:
    """A seeded 2-layer Llama small enough to compare losses and gradients exactly in unit tests."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config)


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """The sum of a Prometheus metric's samples whose labels include `labels`."""
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        match = re.match(rf"{name}(?:{{(.*)}})? (\S+)$", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(key) == value for key, value in labels.items()):
            total += float(match.group(2))
    return total


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def chromium(*args: str) -> str:
    """Run headless Chromium (what `make test` installs) and return what it printed (`--dump-dom`: the page)."""
    executable = shutil.which("chromium")
    assert executable, "browser tests need Chromium: `make test` installs it (Debian package chromium)"
    done = subprocess.run([executable, *CHROMIUM_FLAGS, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
