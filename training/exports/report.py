"""Export reports: what an export kept of its teacher's quality and what it gained in size and speed.

Every number comes from `measure` runs of the teacher (base + adapter in vLLM) and of the export on the same
test prompts; the report is written into the export itself (report.json, report.md, report.png) and stored with
the artifact in the hub.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt

from adapters.datafiles.shapes import Example
from training.exports.measure import Measurement
from training.metrics import task_metrics


def token_agreement(teacher: list[list[int]], candidate: list[list[int]]) -> float:
    """The share of the teacher's greedy tokens the candidate reproduces at the same position."""
    total = sum(map(len, teacher))
    same = sum(
        sum(1 for t, c in zip(ours, theirs, strict=False) if t == c)
        for ours, theirs in zip(teacher, candidate, strict=True)
    )
    return same / total if total else 1.0


def side(measurement: Measurement, answers: list[str], test: list[Example], size_bytes: int) -> dict[str, Any]:
    references = [example.answer for example in test]
    labels = [str(example.label) for example in test] if all(e.label is not None for e in test) else None
    return {
        "task": task_metrics(answers, references, labels),
        "size_bytes": size_bytes,
        "tokens_per_s_single": measurement.tokens_per_s_single,
        "tokens_per_s_batched": measurement.tokens_per_s_batched,
        "peak_rss_bytes": measurement.peak_rss_bytes,
        "load_s": measurement.load_s,
    }


def build_report(
    *,
    label: str,
    source_ref: str,
    runtime: str,
    test: list[Example],
    teacher: dict[str, Any],
    export: dict[str, Any],
    agreement: float,
    answers: tuple[list[str], list[str]],
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The report's JSON; `answers` are the teacher's and the export's greedy answers, kept for inspection."""
    main = str(teacher["task"].get("main", "exact_match"))
    return {
        "label": label,
        "source": source_ref,
        "runtime": runtime,
        "prompts": len(test),
        "main_metric": main,
        "teacher": teacher,
        "export": export,
        "quality_kept": _ratio(export["task"].get(main), teacher["task"].get(main)),
        "greedy_token_agreement": agreement,
        "size_ratio": export["size_bytes"] / teacher["size_bytes"],
        "speedup_single": export["tokens_per_s_single"] / teacher["tokens_per_s_single"],
        "speedup_batched": export["tokens_per_s_batched"] / teacher["tokens_per_s_batched"],
        **extra,
        "answers": [
            {"prompt": example.prompt, "reference": example.answer, "teacher": ours, "export": theirs}
            for example, ours, theirs in zip(test, *answers, strict=True)
        ],
    }


def write_report(folder: Path, report: dict[str, Any]) -> None:
    (folder / "report.json").write_text(json.dumps(report, indent=2, default=str))
    _plot(report, folder / "report.png")
    (folder / "report.md").write_text(_markdown(report))


def _ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None:
        return None
    return ours / theirs if theirs else (1.0 if ours == theirs else None)


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def _plot(report: dict[str, Any], out: Path) -> None:
    """Quality beside single-stream and batched speed, teacher against export."""
    main = report["main_metric"]
    names = ["teacher (base + LoRA)", report["label"]]
    sides = [report["teacher"], report["export"]]
    figure, axes = plt.subplots(1, 3, figsize=(11, 3.8))
    panels = [
        (f"task metric ({main})", [s["task"].get(main, 0.0) for s in sides]),
        ("tokens/s, single stream", [s["tokens_per_s_single"] for s in sides]),
        ("tokens/s, batched", [s["tokens_per_s_batched"] for s in sides]),
    ]
    for axis, (title, values) in zip(axes, panels, strict=True):
        bars = axis.bar(names, values, color=["#7f7f7f", "#1f77b4"])
        axis.bar_label(bars, fmt="%.3g")
        axis.set_title(title)
        axis.tick_params(axis="x", labelrotation=10)
    figure.suptitle(f"{report['source']} -> {report['label']} ({report['runtime']}, {report['prompts']} test prompts)")
    figure.tight_layout()
    figure.savefig(out, dpi=110)
    plt.close(figure)


def _markdown(report: dict[str, Any]) -> str:
    main = report["main_metric"]
    teacher, export = report["teacher"], report["export"]
    rows = [
        (f"task metric ({main})", f"{teacher['task'].get(main, 0):.3f}", f"{export['task'].get(main, 0):.3f}"),
        ("size on disk", f"{teacher['size_bytes'] / 1e6:.1f} MB", f"{export['size_bytes'] / 1e6:.1f} MB"),
        ("tokens/s single stream", f"{teacher['tokens_per_s_single']:.1f}", f"{export['tokens_per_s_single']:.1f}"),
        ("tokens/s batched", f"{teacher['tokens_per_s_batched']:.1f}", f"{export['tokens_per_s_batched']:.1f}"),
        ("peak memory", f"{teacher['peak_rss_bytes'] / 2**20:.0f} MiB", f"{export['peak_rss_bytes'] / 2**20:.0f} MiB"),
    ]
    lines = [
        f"# Export report: {report['source']} -> {report['label']}",
        "",
        f"Measured on this machine over {report['prompts']} test prompts, greedy, teacher = base + adapter in vLLM,"
        f" export run by {report['runtime']}. Peak memory is the measuring process's resident peak (vLLM's"
        " includes its 1 GiB KV cache).",
        "",
        "| | teacher | export |",
        "|---|---|---|",
        *(f"| {name} | {ours} | {theirs} |" for name, ours, theirs in rows),
        "",
        f"- greedy-token agreement with the teacher: {report['greedy_token_agreement']:.3f}",
        f"- quality kept: {_percent(report['quality_kept'])} of the teacher's {main}",
    ]
    if "max_logit_difference" in report:
        lines.append(f"- largest logit difference against base + adapter: {report['max_logit_difference']:.4f}")
    if "precision" in report:
        lines.append(f"- weights: {report['precision']}")
    if "student_before" in report:
        lines.append(
            f"- student: {report['student']} ({report['student_layers']} layers), {main} "
            f"{report['student_before'].get(main, 0):.3f} before distillation (loss curve: distill_curve.png)"
        )
    lines.append("\n![quality and speed](report.png)\n")
    return "\n".join(lines)
