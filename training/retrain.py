"""`loradock retrain`: the next version of an adapter from its production feedback, compared with prod.

1. Export the feedback on the adapter's completions (SFT rows, or DPO rows with `--method dpo`) and hold out a
   seeded share of the corrected completions for evaluation only.
2. Mix in a replay sample of the original training data (the prod version's first training run), against
   forgetting, and train from prod's weights (or from scratch) with prod's own training settings.
3. Answer the original test split and the held-out feedback with prod and with the new version (one vLLM engine),
   and register the new version with alias `candidate`, its comparison with prod, and the ids of every
   interaction and feedback record it learned from. `loradock promote` decides from that comparison.
"""

from __future__ import annotations

import json
import random
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml
from rich.console import Console
from rich.table import Table

from adapters.base_models import local_model_folder, resolve_base_model
from adapters.datafiles.readers import DataError, read_rows
from adapters.datafiles.shapes import Example, detect_shape, to_examples
from adapters.drift.profile import chat_reference
from adapters.feedback_export import export_feedback
from adapters.fingerprint import BaseModelSpec
from adapters.hub import Hub
from adapters.interactions import LEARNED_FROM
from adapters.naming import CANDIDATE_ALIAS, DEFAULT_ALIAS
from adapters.promotion import COMPARISON, current_prod
from adapters.records import AliasTarget, VersionView
from adapters.settings import Settings
from adapters.sources import stage_source
from training.config import ConfigError, TrainConfig, load_config
from training.metrics import task_metrics
from training.profiling import profile_training_data
from training.result_cache import ResultCache

ORIGINAL_DATA = "original_data"
"""Version metadata key: the first run's {"train", "validation", "test"} split files, inherited by retrains."""


@dataclass(frozen=True)
class RetrainOptions:
    adapter: str
    method: Literal["supervised", "dpo"] = "supervised"
    from_scratch: bool = False
    """Fresh LoRA weights instead of continuing from prod's."""
    since: datetime | None = None
    min_score: float = 0.5
    holdout: float = 0.25
    """Share of the corrected completions kept out of training, to evaluate on."""
    replay: float = 3.0
    """Replay rows per feedback row, sampled from the original training split."""
    epochs: float = 2.0
    seed: int = 0
    overrides: dict[str, Any] | None = None
    """`--set section.key=value` on top of prod's training settings."""


@dataclass
class RetrainResult:
    version: VersionView
    comparison: dict[str, Any]
    run_dir: Path


def run_retrain(options: RetrainOptions, settings: Settings, console: Console) -> RetrainResult:
    hub = Hub.open(settings)
    try:
        adapter = hub.registry.get_adapter(options.adapter)
        pending = next((alias for alias in adapter.aliases if alias.name == CANDIDATE_ALIAS), None)
        prod_number = current_prod(adapter, candidate=pending.targets[0].version if pending else -1)
        if prod_number is None:
            raise ConfigError(f"{options.adapter} has no active version to improve on")
        prod = hub.registry.get_version(options.adapter, prod_number)
        fmt = "dpo" if options.method == "dpo" else "sft"
        sft = export_feedback(
            hub.database, options.adapter, fmt="sft", since=options.since, min_score=options.min_score
        )
        exported = (
            sft if fmt == "sft" else export_feedback(hub.database, options.adapter, fmt="dpo", since=options.since)
        )
    finally:
        hub.close()
    if not exported.rows:
        raise ConfigError(
            f"no usable feedback for {options.adapter} ({dict(exported.skipped) or 'none given'}); "
            "post ratings and corrections to /v1/feedback first"
        )
    original = _original_data(prod)
    run_dir = (
        settings.home / "runs" / f"retrain-{options.adapter}-{datetime.now(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"
    )
    (run_dir / "feedback").mkdir(parents=True, exist_ok=True)

    # --- data: feedback minus the held-out completions, plus replay -------------------------------------------
    corrected = [row for row in sft.rows if row.kind == "corrected"]
    corrected_ids = sorted(row.interaction_id for row in corrected)
    rng = random.Random(options.seed)
    held_out = set(rng.sample(corrected_ids, int(len(corrected_ids) * options.holdout)))
    training_rows = [row for row in exported.rows if row.interaction_id not in held_out]
    if not training_rows:
        raise ConfigError("every usable feedback row was held out; lower --holdout or collect more feedback")
    held_out_rows = [row for row in corrected if row.interaction_id in held_out]
    replay = _replay_sample(original, len(training_rows), options, rng) if fmt == "sft" else []
    mixed = [row.data for row in training_rows] + replay
    rng.shuffle(mixed)
    train_file = _write_jsonl(run_dir / "feedback" / "train.jsonl", mixed)
    held_out_file = _write_jsonl(run_dir / "feedback" / "held_out.jsonl", [row.data for row in held_out_rows])
    console.print(
        f"[bold]retrain[/bold] {options.adapter} from {prod.ref}: {len(training_rows)} feedback rows "
        f"({dict(exported.kept)}), {len(replay)} replay rows, {len(held_out_rows)} corrected completions held out; "
        f"left out: {dict(exported.skipped) or 'none'}"
    )

    # --- train -------------------------------------------------------------------------------------------------
    config = retrain_config(prod, original, options, train_file, run_dir)
    from training.finetune import run_finetune

    trained = run_finetune(config, settings, console)

    # --- compare with prod, register as candidate ---------------------------------------------------------------
    base_folder = local_model_folder(resolve_base_model(config.base_model, settings.models_dir))
    sets = {"original_test": original.get("test"), "held_out_feedback": str(held_out_file) if held_out_rows else None}
    comparison = compare(str(base_folder), prod, trained.adapter_dir, sets, config.eval_max_new_tokens, settings)
    comparison["against"] = prod.ref
    learned = {
        "interactions": sorted({row.interaction_id for row in training_rows}),
        "feedback": sorted({feedback_id for row in training_rows for feedback_id in row.feedback_ids}),
    }
    version = _register(
        options.adapter, trained.adapter_dir, base_folder, settings, run_dir, prod, comparison, learned, original, mixed
    )
    _write_report(run_dir, version, comparison)
    show_comparison(console, prod, version, comparison)
    return RetrainResult(version, comparison, run_dir)


def _original_data(prod: VersionView) -> dict[str, str]:
    """The split files of the first run in prod's lineage (what replay samples and the test gate uses)."""
    inherited = prod.metadata.get(ORIGINAL_DATA)
    if inherited:
        return dict(inherited)
    run_dir = prod.metadata.get("run_dir")
    if not run_dir:
        raise ConfigError(
            f"{prod.ref} was not trained by loradock, so its training data is unknown: replay and the original-test "
            "gate need it"
        )
    folder = Path(run_dir) / "data"
    files = {split: str(folder / f"{split}.jsonl") for split in ("train", "validation", "test")}
    missing = [path for path in files.values() if not Path(path).is_file()]
    if missing:
        raise ConfigError(f"the data of {prod.ref}'s training run is gone: {', '.join(missing)}")
    return files


def _replay_sample(
    original: dict[str, str], feedback_rows: int, options: RetrainOptions, rng: random.Random
) -> list[dict[str, Any]]:
    lines = Path(original["train"]).read_text().splitlines()
    count = min(len(lines), round(feedback_rows * options.replay))
    return [json.loads(line) for line in rng.sample(lines, count)]


def retrain_config(
    prod: VersionView, original: dict[str, str], options: RetrainOptions, train_file: Path, run_dir: Path
) -> TrainConfig:
    """Prod's own training settings (from its run folder) with the new data, the schedule and the start point."""
    base: dict[str, Any] = {}
    prod_run = prod.metadata.get("run_dir")
    if prod_run and (Path(prod_run) / "config.yaml").is_file():
        base = yaml.safe_load((Path(prod_run) / "config.yaml").read_text()) or {}
    for key in ("output_dir", "register_as", "init_from", "owner_tenant"):
        base.pop(key, None)
    data = base.setdefault("data", {})
    # SFT validates on the original validation split; DPO rows have another shape, so they carve their own.
    supervised = options.method == "supervised"
    data.update(
        train_file=str(train_file),
        validation_file=original.get("validation") if supervised else None,
        test_file=None,
        split=[1.0, 0.0, 0.0] if supervised else [0.9, 0.1, 0.0],
        shape="auto",
    )
    base.update(
        method=options.method,
        output_dir=str(run_dir / "run"),
        max_steps=-1,
        epochs=options.epochs,
        early_stopping_patience=None,
        evaluate=False,
        seed=options.seed,
        init_from=None if options.from_scratch else prod.ref,
    )
    path = run_dir / "retrain-config.yaml"
    path.write_text(yaml.safe_dump(base, sort_keys=False))
    return load_config(path, options.overrides or {})


def load_examples(path: str) -> list[Example]:
    rows, refused = read_rows(Path(path))
    if refused:
        raise DataError(f"{path}:{refused[0].line}: {refused[0].reason}")
    examples, wrong = to_examples(rows, detect_shape(rows), None)
    if wrong:
        raise DataError(f"{path}:{wrong[0].line}: {wrong[0].reason}")
    return [example for example in examples if example.is_chat]


def compare(
    base_folder: str,
    prod: VersionView,
    candidate_dir: Path,
    sets: dict[str, str | None],
    max_new_tokens: int,
    settings: Settings,
) -> dict[str, Any]:
    """Prod's and the candidate's task metric on each evaluation set (greedy answers from one vLLM engine; prod's
    answers on a set it was evaluated on before come from the answer cache)."""
    from transformers import AutoTokenizer

    from training.evaluate import generate_with_adapters

    hub = Hub.open(settings)
    try:
        prod_dir = hub.store.path(prod.sha256)
    finally:
        hub.close()
    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    examples = {name: load_examples(path) for name, path in sets.items() if path}
    rank = max(prod.rank, int(json.loads((candidate_dir / "adapter_config.json").read_text())["r"]))
    models: dict[str, Path | None] = {"prod": prod_dir, "candidate": candidate_dir}
    cache = ResultCache(settings.cache_dir / "answers")
    answers = generate_with_adapters(base_folder, models, tokenizer, examples, max_new_tokens, rank, cache)
    result: dict[str, Any] = {"sets": {}}
    for name, items in examples.items():
        references = [example.answer for example in items]
        scores = {model: task_metrics(answers[model][name], references) for model in models}
        metric = scores["prod"]["main"]
        result["sets"][name] = {
            "metric": metric,
            "count": len(items),
            "prod": scores["prod"][metric],
            "candidate": scores["candidate"][metric],
        }
    return result


def _register(
    name: str,
    adapter_dir: Path,
    base_folder: Path,
    settings: Settings,
    run_dir: Path,
    prod: VersionView,
    comparison: dict[str, Any],
    learned: dict[str, list[str]],
    original: dict[str, str],
    trained_on: list[dict[str, Any]],
) -> VersionView:
    hub = Hub.open(settings)
    try:
        staged = stage_source(hub.store, str(adapter_dir), hub.registry.limits, kind="training")
        metadata = {
            "run_id": run_dir.name,
            "run_dir": str(run_dir / "run"),
            "parent": prod.ref,
            COMPARISON: comparison,
            LEARNED_FROM: learned,
            ORIGINAL_DATA: original,
        }
        base = BaseModelSpec.from_folder(base_folder)
        if not any(alias.name == DEFAULT_ALIAS for alias in hub.registry.get_adapter(name).aliases):
            # Without a prod alias the newest version serves `NAME`: pin what serves now before the candidate lands.
            hub.registry.set_alias(name, DEFAULT_ALIAS, [AliasTarget(version=prod.version)], updated_by="retrain")
        version = hub.registry.register(
            name, staged, base, created_by=f"retrain:{run_dir.name}", metadata=metadata, tenant=prod.owner
        )
        hub.registry.set_alias(name, CANDIDATE_ALIAS, [AliasTarget(version=version.version)], updated_by="retrain")
        prompts, answers = chat_reference(trained_on)
        profile_training_data(hub, version, prompts, answers, f"retrain:{run_dir.name}")
        return version
    finally:
        hub.close()


def show_comparison(console: Console, prod: VersionView, candidate: VersionView, comparison: dict[str, Any]) -> None:
    table = Table("evaluation set", "metric", "items", prod.ref, candidate.ref, "change", title="candidate vs prod")
    for name, scores in comparison["sets"].items():
        change = scores["candidate"] - scores["prod"]
        colour = "green" if change >= 0 else "red"
        table.add_row(
            name,
            scores["metric"],
            str(scores["count"]),
            f"{scores['prod']:.3f}",
            f"{scores['candidate']:.3f}",
            f"[{colour}]{change:+.3f}[/{colour}]",
        )
    console.print(table)
    console.print(
        f"registered [bold]{candidate.ref}[/bold] as {candidate.name}:{CANDIDATE_ALIAS}; "
        f"`loradock promote {candidate.name}` moves prod to it if no metric got worse"
    )


def _write_report(run_dir: Path, candidate: VersionView, comparison: dict[str, Any]) -> None:
    """retrain.json and a bar chart of prod vs candidate per evaluation set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    (run_dir / "retrain.json").write_text(json.dumps({"candidate": candidate.ref, **comparison}, indent=2))
    names = list(comparison["sets"])
    figure, axis = plt.subplots(figsize=(6, 3.5))
    width = 0.38
    for offset, model in ((-width / 2, "prod"), (width / 2, "candidate")):
        values = [comparison["sets"][name][model] for name in names]
        axis.bar([i + offset for i in range(len(names))], values, width, label=model)
    axis.set_xticks(range(len(names)), [name.replace("_", " ") for name in names])
    axis.set_ylim(0, 1)
    axis.set_ylabel("task metric")
    axis.set_title(f"{candidate.ref} vs {comparison['against']}")
    axis.legend()
    figure.tight_layout()
    figure.savefig(run_dir / "retrain.png", dpi=120)
    plt.close(figure)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))
    return path
