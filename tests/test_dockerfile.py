"""The Dockerfile cannot be built here (no Docker engine), so it is linted with hadolint instead."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

HADOLINT = Path(sys.executable).parent / "hadolint"


def test_dockerfile_passes_hadolint() -> None:
    done = subprocess.run([str(HADOLINT), str(REPO / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_dockerfile_has_gpu_default_and_cpu_variant() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert "ARG VARIANT=gpu" in text
    assert "vllm/vllm-openai:v0.32.0" in text
    assert 'LORADOCK_EXTRA="[cpu]"' in text
    assert 'CMD ["serve"]' in text
