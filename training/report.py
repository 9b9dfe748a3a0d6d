"""Run reports: JSON for tools, Markdown for people, PNG plots of the curves and of base against tuned."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt


def read_metrics_log(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(log: list[dict[str, Any]], out: Path) -> Path | None:
    """Training and validation loss against the optimizer step."""
    train = [(entry["step"], entry["loss"]) for entry in log if "loss" in entry]
    validation = [(entry["step"], entry["eval_loss"]) for entry in log if "eval_loss" in entry]
    if not train and not validation:
        return None
    figure, axis = plt.subplots(figsize=(7, 4))
    if train:
        axis.plot(*zip(*train, strict=True), label="training loss", color="#1f77b4")
    if validation:
        axis.plot(*zip(*validation, strict=True), "o-", label="validation loss", color="#d62728")
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title("Training curves")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def plot_comparison(evaluation: dict[str, Any], out: Path) -> Path:
    """Base against tuned on the task metrics (higher is better)."""
    base, tuned = evaluation["base"]["task"], evaluation["tuned"]["task"]
    names = [key for key, value in tuned.items() if isinstance(value, float) and key in base]
    figure, axis = plt.subplots(figsize=(max(5, 1.6 * len(names) + 2), 4))
    positions = range(len(names))
    axis.bar([p - 0.2 for p in positions], [base[n] for n in names], width=0.4, label="base", color="#999999")
    axis.bar([p + 0.2 for p in positions], [tuned[n] for n in names], width=0.4, label="tuned", color="#2ca02c")
    axis.set_xticks(list(positions), names, rotation=15)
    axis.set_ylim(0, 1.05)
    axis.set_title("Held-out test split: base vs tuned")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out, dpi=120)
    plt.close(figure)
    return out


def write_eval_report(run_dir: Path, evaluation: dict[str, Any], summary: dict[str, Any]) -> Path:
    """eval_report.json and eval_report.md (with the plots) in the run folder."""
    (run_dir / "eval_report.json").write_text(json.dumps({**summary, "evaluation": evaluation}, indent=2, default=str))
    curves = plot_curves(read_metrics_log(run_dir / "metrics.jsonl"), run_dir / "curves.png")
    comparison = plot_comparison(evaluation, run_dir / "comparison.png") if evaluation["tuned"]["task"] else None
    main = evaluation["main_metric"]
    base, tuned = evaluation["base"], evaluation["tuned"]
    lines = [
        f"# Evaluation of {summary.get('adapter', 'the adapter')}",
        "",
        f"Base model `{summary.get('base_model')}`, {tuned['task'].get('count', 0)} held-out test examples.",
        "",
        "| metric | base | tuned |",
        "|---|---|---|",
    ]
    for key, value in tuned["task"].items():
        if isinstance(value, float):
            lines.append(f"| {key}{' (main)' if key == main else ''} | {base['task'].get(key, 0):.3f} | {value:.3f} |")
    lines += [
        f"| loss | {base['loss']:.4f} | {tuned['loss']:.4f} |",
        f"| perplexity | {base['perplexity']:.2f} | {tuned['perplexity']:.2f} |",
        "",
        "## Forgetting check",
        "",
        f"Perplexity on loradock's general-text probe: base {base['probe_perplexity']:.2f}, tuned "
        f"{tuned['probe_perplexity']:.2f} ({evaluation['forgetting']['relative_change']:+.1%}).",
    ]
    if "confusion" in tuned["task"]:
        confusion = tuned["task"]["confusion"]
        lines += ["", "## Confusion matrix (tuned; rows: truth)", "", "| | " + " | ".join(confusion["labels"]) + " |"]
        lines.append("|---" * (len(confusion["labels"]) + 1) + "|")
        for label, row in zip(confusion["labels"], confusion["matrix"], strict=False):
            lines.append(f"| {label} | " + " | ".join(str(count) for count in row) + " |")
    if evaluation.get("samples"):
        lines += ["", "## Samples", "", "| prompt | reference | base | tuned |", "|---|---|---|---|"]
        for sample in evaluation["samples"][:5]:
            cells = [sample[key].replace("\n", " ").replace("|", "/")[:120] for key in ("prompt", "reference")]
            cells += [sample[key].replace("\n", " ").replace("|", "/")[:120] for key in ("base", "tuned")]
            lines.append("| " + " | ".join(cells) + " |")
    for title, image in (("Training curves", curves), ("Base vs tuned", comparison)):
        if image is not None:
            lines += ["", f"## {title}", "", f"![{title}]({image.name})"]
    out = run_dir / "eval_report.md"
    out.write_text("\n".join(lines) + "\n")
    return out
