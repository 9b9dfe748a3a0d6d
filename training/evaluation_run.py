"""`loradock eval`: evaluate an adapter folder (or a finished run) on held-out data, outside of training."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from rich.console import Console

from adapters.base_models import local_model_folder, resolve_base_model
from adapters.datafiles.readers import read_rows
from adapters.datafiles.shapes import detect_shape, to_examples
from adapters.settings import Settings
from training.evaluate import evaluate_adapter
from training.report import write_eval_report
from training.result_cache import ResultCache


class EvaluationError(ValueError):
    """The adapter or its data cannot be evaluated; the message says why."""


def evaluate_folder(
    target: Path,
    data: Path | None,
    base_model: str | None,
    out: Path | None,
    max_new_tokens: int,
    settings: Settings,
    console: Console,
) -> Path:
    run_config = target / "config.yaml"
    adapter_dir = target / "adapter" if run_config.is_file() else target
    if not (adapter_dir / "adapter_config.json").is_file():
        raise EvaluationError(f"{target} is neither a run folder nor an adapter folder (no adapter_config.json)")
    config = yaml.safe_load(run_config.read_text()) if run_config.is_file() else {}
    data = data or (target / "data" / "test.jsonl" if run_config.is_file() else None)
    if data is None:
        raise EvaluationError("pass --data: an adapter folder carries no test split")
    base_ref = base_model or config.get("base_model") or settings.base_model
    base_folder = local_model_folder(resolve_base_model(base_ref, settings.models_dir))
    rows, refused = read_rows(data)
    if refused:
        raise EvaluationError(f"{data}:{refused[0].line}: {refused[0].reason}")
    examples, wrong = to_examples(rows, detect_shape(rows), (config.get("data") or {}).get("system_prompt"))
    if wrong:
        raise EvaluationError(f"{data}:{wrong[0].line}: {wrong[0].reason}")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    rank = json.loads((adapter_dir / "adapter_config.json").read_text())["r"]
    console.print(f"evaluating {adapter_dir} over {base_ref} on {len(examples)} examples from {data}")
    result = evaluate_adapter(
        str(base_folder),
        adapter_dir,
        tokenizer,
        examples,
        max_new_tokens=max_new_tokens,
        lora_rank=rank,
        cache=ResultCache(settings.cache_dir / "answers"),
    )
    report_dir = out or (target if run_config.is_file() else adapter_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    summary = {"adapter": str(adapter_dir), "base_model": base_ref, "data": str(data)}
    return write_eval_report(report_dir, result.to_json(), summary)
