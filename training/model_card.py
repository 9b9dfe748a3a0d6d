"""What a trained adapter carries besides its weights: the parity manifest and a model card."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adapters import __version__
from adapters.fingerprint import BaseModelSpec
from adapters.validation import MANIFEST_FILE


def write_manifest(
    adapter_dir: Path, base: BaseModelSpec, *, base_model: str, run_id: str, dataset_sha256: str
) -> dict[str, Any]:
    """The training/serving parity contract, checked again at registration and at serving time."""
    manifest = {
        "loradock_version": __version__,
        "base_model": base_model,
        "base_fingerprint": base.fingerprint,
        "contract": base.contract,
        "run_id": run_id,
        "dataset_sha256": dataset_sha256,
        "trained_at": datetime.now(UTC).isoformat(),
    }
    (adapter_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return manifest


def write_model_card(
    adapter_dir: Path,
    *,
    name: str,
    base_model: str,
    config: dict[str, Any],
    dataset: dict[str, Any],
    metrics: dict[str, Any] | None,
) -> None:
    """README.md in the adapter folder (replacing peft's template card)."""
    lines = [
        f"# {name}",
        "",
        f"A LoRA adapter for `{base_model}`, trained with loradock {__version__} (TRL SFT + peft).",
        "",
        "## Intended use",
        "",
        "Serve it beside its base with `loradock serve` (or any vLLM server with LoRA enabled), prompting with the",
        "base model's own chat template. It was trained and evaluated only on the data described below; check it",
        "on your own traffic before relying on it elsewhere.",
        "",
        "## Data",
        "",
        f"- dataset sha256: `{dataset.get('dataset_sha256', '?')}`",
        f"- splits: {dataset.get('splits', {})}",
        f"- shape: {dataset.get('shape', '?')}",
        "",
        "## Hyper-parameters",
        "",
        "```json",
        json.dumps({key: config[key] for key in sorted(config) if key != "data"}, indent=2, default=str),
        "```",
    ]
    if metrics:
        main = metrics.get("main_metric", "exact_match")
        base, tuned = metrics["base"], metrics["tuned"]
        lines += [
            "",
            "## Evaluation (test split)",
            "",
            "| | base | tuned |",
            "|---|---|---|",
            f"| {main} | {base['task'].get(main, 'n/a')} | {tuned['task'].get(main, 'n/a')} |",
            f"| loss | {base['loss']:.4f} | {tuned['loss']:.4f} |",
            f"| perplexity | {base['perplexity']:.2f} | {tuned['perplexity']:.2f} |",
            "| general-text perplexity (forgetting) | "
            f"{base['probe_perplexity']:.2f} | {tuned['probe_perplexity']:.2f} |",
        ]
    (adapter_dir / "README.md").write_text("\n".join(lines) + "\n")
