"""Export reports from measurements: agreement, ratios, the Markdown, JSON and chart files (pure logic)."""

from __future__ import annotations

import json
from pathlib import Path

from adapters.datafiles.shapes import Example
from training.exports.measure import Measurement
from training.exports.report import build_report, side, token_agreement, write_report


def measurement(tokens: list[list[int]], single: float, batched: float) -> Measurement:
    return Measurement(
        tokens=tokens, tokens_per_s_single=single, tokens_per_s_batched=batched, peak_rss_bytes=1 << 30, load_s=2.0
    )


def test_token_agreement_counts_same_tokens_at_the_same_position() -> None:
    assert token_agreement([[1, 2, 3], [4, 5]], [[1, 2, 3], [4, 5]]) == 1.0
    assert token_agreement([[1, 2, 3, 4]], [[1, 9, 3]]) == 0.5
    assert token_agreement([[]], [[7]]) == 1.0


def test_report_compares_the_export_with_its_teacher_and_writes_three_files(tmp_path: Path) -> None:
    test = [
        Example(1, (("user", "ticket a"), ("assistant", '{"category": "billing", "priority": "low"}'))),
        Example(2, (("user", "ticket b"), ("assistant", '{"category": "bug", "priority": "urgent"}'))),
    ]
    teacher_answers = [test[0].answer, test[1].answer]
    export_answers = [test[0].answer, '{"category": "bug", "priority": "low"}']
    teacher = side(measurement([[1, 2], [3, 4]], 20.0, 80.0), teacher_answers, test, 300_000_000)
    export = side(measurement([[1, 2], [3, 5]], 60.0, 120.0), export_answers, test, 100_000_000)
    report = build_report(
        label="onnx-int4",
        source_ref="support@1",
        runtime="onnxruntime-genai",
        test=test,
        teacher=teacher,
        export=export,
        agreement=0.75,
        answers=(teacher_answers, export_answers),
        extra={"precision": "int4"},
    )
    assert report["main_metric"] == "json_all_fields"
    assert report["quality_kept"] == 0.5 and report["size_ratio"] == 1 / 3
    assert report["speedup_single"] == 3.0 and report["speedup_batched"] == 1.5
    assert report["answers"][1]["export"] == export_answers[1]
    write_report(tmp_path, report)
    assert json.loads((tmp_path / "report.json").read_text())["precision"] == "int4"
    markdown = (tmp_path / "report.md").read_text()
    assert (
        "| tokens/s single stream | 20.0 | 60.0 |" in markdown
        and "weights: int4" in markdown
        and "quality kept: 50%" in markdown
    )
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
