"""Exports of the demo adapter: merged (parity, vLLM), ONNX int4/int8 (onnxruntime-genai), distillation into a
tiny student, and refusals that leave the hub as it was. One short demo training serves the whole module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from adapters.hub import Hub
from adapters.settings import Settings
from tests.helpers import LORADOCK, ServerProcess, make_lora_adapter, run_loradock

pytestmark = pytest.mark.slow

ADAPTER = "support-tickets"
MAX_LOGIT_DIFFERENCE = 1.0
"""Bound on |logits(base + adapter) - logits(merged)|: the merge is exact in float32, and the merged weights are
saved in the base's bfloat16 (8 significant bits), which moves logits of this model by a few tenths at most."""
ONNX_METRIC_MARGIN = {"int8": 0.1, "int4": 0.35}
"""How far the quantized exports' task metric may fall below the teacher's on the 20 test prompts. Measured here:
int8 0.95 against the teacher's 0.95. int4 with the builder's blocks of 32: 0.85, 0.65 and 0.60 from three demo
trainings (the same with its k_quant algorithm; keeping the tied LM head in int8 builds a model onnxruntime cannot
load); with blocks of 16, as loradock builds it, 0.75 where 32 gave 0.60. 4-bit block quantization of a 135M model
costs several answers in 20, how many depends on the adapter; the greedy-token agreement stays above 0.85."""


def loradock(
    home: Path, *args: str, check: bool = True, timeout: float = 900, **env_extra: str
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LORADOCK_HOME": str(home), "COLUMNS": "200", **env_extra}
    done = run_loradock(args, env, timeout)
    if check:
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def home(demo_training: tuple[Path, Path], tiny_model: Path) -> Path:
    """The session's hub with the demo adapter (the shipped demo task, trained once): support-tickets@1."""
    return demo_training[0]


def hub_state(home: Path) -> tuple[set[str], list[str]]:
    hub = Hub.open(Settings(home=home))
    try:
        artifacts = [a.id for v in hub.registry.get_adapter(ADAPTER).versions for a in v.artifacts]
        return hub.store.stored(), artifacts
    finally:
        hub.close()


def report_of(home: Path, label: str) -> dict[str, Any]:
    hub = Hub.open(Settings(home=home))
    try:
        found = hub.registry.artifacts.by_label(ADAPTER, 1, label)
        assert found is not None, label
        return json.loads((found[1] / "report.json").read_text())
    finally:
        hub.close()


def block_sizes(home: Path, label: str) -> set[int]:
    """The weights per scale of each quantized MatMul in an ONNX export."""
    import onnx

    hub = Hub.open(Settings(home=home))
    try:
        _, folder = hub.registry.artifacts.by_label(ADAPTER, 1, label) or (None, Path())
    finally:
        hub.close()
    model = onnx.load(folder / "model.onnx", load_external_data=False)
    return {
        attribute.i
        for node in model.graph.node
        if node.op_type == "MatMulNBits"
        for attribute in node.attribute
        if attribute.name == "block_size"
    }


def test_merged_export_keeps_parity_and_vllm_serves_it_like_base_plus_adapter(
    home: Path, demo_hub_server_process: ServerProcess
) -> None:
    done = loradock(home, "export", "merged", f"{ADAPTER}@1")
    assert "registered merged" in done.stdout
    report = report_of(home, "merged")
    assert report["max_logit_difference"] < MAX_LOGIT_DIFFERENCE
    assert report["prompts"] == 20
    different = [a for a in report["answers"] if a["teacher"] != a["export"]]
    assert not different, different
    assert report["export"]["task"] == report["teacher"]["task"]
    for side in ("teacher", "export"):
        assert report[side]["tokens_per_s_single"] > 0 and report[side]["peak_rss_bytes"] > 100 << 20
    hub = Hub.open(Settings(home=home))
    try:
        artifact, folder = hub.registry.artifacts.by_label(ADAPTER, 1, "merged") or (None, Path())
    finally:
        hub.close()
    assert artifact is not None and artifact.kind == "merged" and artifact.parent_id is None
    for produced in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", "report.md"):
        assert (folder / produced).is_file(), produced
    assert (folder / "report.png").read_bytes()[:4] == b"\x89PNG"

    shown = loradock(home, "adapters", "show", ADAPTER).stdout
    assert artifact.id in shown and "merged" in shown
    demo_hub_server_process.wait_ready()  # started before the export: it finds what was registered since
    url = demo_hub_server_process.url
    version = httpx.get(f"{url}/v1/adapters/{ADAPTER}/versions/1", timeout=30).json()
    assert [a["id"] for a in version["artifacts"]] == [artifact.id]
    download = httpx.get(f"{url}/v1/adapters/{ADAPTER}/versions/1/artifacts/{artifact.id}/download", timeout=120)
    assert download.status_code == 200
    archive = home / "merged.tar.gz"
    archive.write_bytes(download.content)
    with tarfile.open(archive) as bundle:
        assert {"model.safetensors", "report.json", "config.json"} <= set(bundle.getnames())
    missing = httpx.get(f"{url}/v1/adapters/{ADAPTER}/versions/1/artifacts/art-nope/download", timeout=30)
    assert missing.status_code == 404 and "art-nope" in missing.text


def test_onnx_int4_and_int8_run_in_onnxruntime_genai_close_to_the_teacher(home: Path) -> None:
    reports = {}
    for precision in ("int4", "int8"):
        done = loradock(home, "export", "onnx", f"{ADAPTER}@1", "--precision", precision)
        assert f"registered onnx-{precision}" in done.stdout
        reports[precision] = report_of(home, f"onnx-{precision}")
    main = reports["int4"]["main_metric"]
    teacher = reports["int4"]["teacher"]["task"][main]
    assert teacher > 0.3  # the demo adapter learned the task, so the margin below means something
    for precision, report in reports.items():
        assert report["runtime"] == "onnxruntime-genai" and report["precision"] == precision
        assert report["export"]["task"][main] >= teacher - ONNX_METRIC_MARGIN[precision], report["export"]["task"]
        assert report["greedy_token_agreement"] > 0.5
        assert report["export"]["tokens_per_s_single"] > 0 and report["export"]["tokens_per_s_batched"] > 0
        assert report["export"]["size_bytes"] < report["teacher"]["size_bytes"]
    assert block_sizes(home, "onnx-int4") == {16} and block_sizes(home, "onnx-int8") == {32}
    # measured, not copied: the two builds differ in size and speed
    assert reports["int4"]["export"]["size_bytes"] < reports["int8"]["export"]["size_bytes"]
    assert reports["int4"]["export"]["tokens_per_s_single"] != reports["int8"]["export"]["tokens_per_s_single"]

    first = json.loads((home / "run" / "data" / "test.jsonl").read_text().splitlines()[0])["messages"]
    system, user = first[0]["content"], first[1]["content"]
    assert reports["int8"]["answers"][0]["prompt"] == user
    ran = loradock(home, "run-onnx", f"{ADAPTER}@1", "--label", "onnx-int8", "--system", system, "--prompt", user)
    assert ran.stdout.strip() == reports["int8"]["answers"][0]["export"].strip()


def test_distillation_into_a_tiny_student_beats_the_student_before(home: Path) -> None:
    done = loradock(
        home,
        "distill",
        f"{ADAPTER}@1",
        *("--student", "tiny-llama", "--steps", "200", "--learning-rate", "3e-3", "--batch-size", "8"),
    )
    assert "registered distilled" in done.stdout
    report = report_of(home, "distilled")
    main = report["main_metric"]
    assert report["student_layers"] == 2
    assert report["export"]["task"][main] > report["student_before"][main], (report["export"], report["student_before"])
    assert report["export"]["size_bytes"] < report["teacher"]["size_bytes"] / 5

    # the student is a model of its own: it exports to ONNX like any other, with the student as its parent
    loradock(home, "export", "onnx", f"{ADAPTER}@1", "--from", "distilled", "--precision", "int4")
    onnx = report_of(home, "distilled-onnx-int4")
    assert onnx["runtime"] == "onnxruntime-genai" and onnx["export"]["tokens_per_s_single"] > 0
    hub = Hub.open(Settings(home=home))
    try:
        artifacts = {a.label: a for a in hub.registry.get_version(ADAPTER, 1).artifacts}
    finally:
        hub.close()
    assert artifacts["distilled-onnx-int4"].parent_id == artifacts["distilled"].id
    missing = loradock(home, "export", "onnx", f"{ADAPTER}@1", "--from", "no-such-label", check=False)
    assert missing.returncode == 1 and "no artifact labelled 'no-such-label'" in missing.stdout, missing.stdout


def test_bad_references_and_interrupted_exports_leave_the_hub_unchanged(
    home: Path, tiny_model: Path, tmp_path: Path
) -> None:
    unknown = loradock(home, "export", "merged", "no-such-adapter@1", check=False)
    assert unknown.returncode == 1 and "no-such-adapter" in unknown.stdout, unknown.stdout
    tiny_adapter = make_lora_adapter(tiny_model, tmp_path / "tiny", seed=3)
    loradock(home, "adapters", "register", "tiny-one", str(tiny_adapter), LORADOCK_BASE_MODEL=str(tiny_model))
    wrong_base = loradock(home, "export", "onnx", "tiny-one@1", check=False)
    assert wrong_base.returncode == 1 and "trained for another base" in wrong_base.stdout, wrong_base.stdout
    bad_precision = loradock(home, "export", "onnx", f"{ADAPTER}@1", "--precision", "int3", check=False)
    assert bad_precision.returncode == 2 and "int3" in bad_precision.stdout

    before = hub_state(home)
    env = {**os.environ, "LORADOCK_HOME": str(home), "COLUMNS": "200"}
    export = subprocess.Popen(
        [str(LORADOCK), "export", "merged", f"{ADAPTER}@1"], env=env, stdout=subprocess.PIPE, text=True
    )
    incoming = home / "artifacts" / ".incoming"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(p.is_file() for p in incoming.rglob("*.safetensors")):
        time.sleep(0.5)  # interrupt once the merged weights are being written
    export.send_signal(signal.SIGTERM)
    output, _ = export.communicate(timeout=120)
    assert export.returncode == 130 and "nothing was registered" in output, output
    assert hub_state(home) == before
    assert not list(incoming.iterdir())
