"""From data files to clean train/validation/test splits, with a validation report and a dataset card.

Order of work: read (refusing unreadable lines), normalize to one shape (refusing rows that do not fit), drop
empty and over-long rows, drop exact and near duplicates, split (given files, or seeded and stratified by label),
remove test rows that leak from train, then write the splits and a card with content hashes.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from datasketch import MinHash, MinHashLSH
from pydantic import BaseModel, ConfigDict, Field

from adapters.datafiles.readers import DataError, Refusal, read_rows
from adapters.datafiles.shapes import Example, Shape, detect_shape, to_examples
from training.data.tokenize import encode

SPLITS = ("train", "validation", "test")
_WORD = re.compile(r"\w+")


STRICT_SECTION = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class DataSettings(BaseModel):
    """Where the data comes from and how it is cleaned and split."""

    model_config = STRICT_SECTION

    train_file: str = ""
    """JSONL, CSV or Parquet file (or `builtin:support-tickets`, the demo task's generated data)."""
    validation_file: str | None = None
    """A given validation split; unset: carved out of the train file."""
    test_file: str | None = None
    """A given test split; unset: carved out of the train file."""
    shape: Literal["auto", "messages", "preference", "prompt_completion", "instruction", "classification", "text"] = (
        "auto"
    )
    """The dataset's shape, or auto (detected from its fields)."""
    system_prompt: str | None = None
    """Added as the system turn to every chat example that has none."""
    split: tuple[float, float, float] = (0.7, 0.2, 0.1)
    """Train/validation/test fractions when splits are carved out of the train file."""
    max_seq_len: int = Field(default=1024, ge=16)
    """Longer examples (in tokens of the base tokenizer) are dropped and counted."""
    near_duplicate_threshold: float = Field(default=0.9, gt=0, le=1)
    """Jaccard similarity of word 3-grams above which two examples count as near duplicates."""
    max_refused_fraction: float = Field(default=0.0, ge=0, le=1)
    """Refused rows tolerated before training is refused (0: any unreadable row stops the run)."""
    seed: int = 0


@dataclass
class FileReport:
    path: str
    sha256: str
    rows_read: int
    refused: list[Refusal]


@dataclass
class DataReport:
    shape: str
    files: list[FileReport]
    empty: int = 0
    too_long: int = 0
    exact_duplicates: int = 0
    near_duplicates: int = 0
    leaked_from_train: int = 0
    token_lengths: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    labels: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def rows_read(self) -> int:
        return sum(report.rows_read for report in self.files)

    @property
    def refused(self) -> list[tuple[str, Refusal]]:
        return [(report.path, refusal) for report in self.files for refusal in report.refused]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["rows_read"] = self.rows_read
        return data


@dataclass
class PreparedData:
    splits: dict[str, list[Example]]
    report: DataReport
    split_sha256: dict[str, str]

    @property
    def dataset_sha256(self) -> str:
        """One hash for the whole prepared dataset (lineage: which data a version learned from)."""
        return hashlib.sha256(json.dumps(self.split_sha256, sort_keys=True).encode()).hexdigest()


def prepare_data(settings: DataSettings, tokenizer: Any, out_dir: Path) -> PreparedData:
    """Validate, clean and split; raise DataError (with line numbers) when the data cannot be trained on."""
    if abs(sum(settings.split) - 1) > 1e-6 or any(part < 0 for part in settings.split):
        raise DataError(f"split fractions must be non-negative and sum to 1, got {settings.split}")
    given = {"train": settings.train_file, "validation": settings.validation_file, "test": settings.test_file}
    loaded, files, shape = _load_all(given, settings, out_dir)
    report = DataReport(shape=shape, files=files)
    _refuse_if_too_many(report, settings)
    cleaned: dict[str, list[Example]] = {}
    lengths: list[int] = []
    for name, examples in loaded.items():
        cleaned[name], file_lengths = _clean(examples, tokenizer, settings, report)
        lengths += file_lengths
    if lengths:
        report.token_lengths = _percentiles(lengths)
    _dedupe(cleaned, settings, report)
    splits = _split(cleaned, settings)
    splits["test"] = _remove_leaks(splits["train"], splits["test"], settings, report)
    if not splits["train"]:
        raise DataError("no training examples are left after cleaning; see the validation report")
    report.splits = {name: len(examples) for name, examples in splits.items()}
    report.labels = {
        name: dict(Counter(e.label for e in examples if e.label is not None)) for name, examples in splits.items()
    }
    if shape == "classification" and len(report.labels["train"]) < 2:
        only = next(iter(report.labels["train"]), "?")
        raise DataError(f"the label column has a single class ({only!r}): a classifier needs at least two")
    hashes = _write_splits(splits, out_dir)
    prepared = PreparedData(splits, report, hashes)
    _write_card(prepared, out_dir)
    return prepared


def _load_all(
    given: dict[str, str | None], settings: DataSettings, out_dir: Path
) -> tuple[dict[str, list[Example]], list[FileReport], Shape]:
    loaded: dict[str, list[Example]] = {}
    files: list[FileReport] = []
    shape: Shape | None = None if settings.shape == "auto" else settings.shape  # type: ignore[assignment]
    for split, source in given.items():
        if not source:
            continue
        path = _materialize(source, out_dir)
        rows, refused = read_rows(path)
        if not rows:
            reasons = "; ".join(f"line {r.line}: {r.reason}" for r in refused[:5])
            raise DataError(f"{path}: no readable rows ({reasons})" if reasons else f"{path}: no rows")
        shape = shape or detect_shape(rows)
        examples, wrong = to_examples(rows, shape, settings.system_prompt)
        rows_read = len(rows) + len(refused)
        refused = sorted(refused + wrong, key=lambda refusal: refusal.line)
        files.append(FileReport(str(path), _file_sha256(path), rows_read, refused))
        loaded[split] = examples
    assert shape is not None
    return loaded, files, shape


def _materialize(source: str, out_dir: Path) -> Path:
    if source == "builtin:support-tickets":
        from training.demo_task import write_dataset

        return write_dataset(out_dir / "source" / "support-tickets.jsonl")
    return Path(source).expanduser()


def _refuse_if_too_many(report: DataReport, settings: DataSettings) -> None:
    refused = report.refused
    if not refused:
        return
    fraction = len(refused) / max(report.rows_read, 1)
    if fraction > settings.max_refused_fraction:
        listed = "\n".join(f"  {path}:{refusal.line}: {refusal.reason}" for path, refusal in refused[:20])
        more = f"\n  ... and {len(refused) - 20} more" if len(refused) > 20 else ""
        raise DataError(
            f"{len(refused)} of {report.rows_read} rows were refused (allowed: {settings.max_refused_fraction:.0%}); "
            f"fix them or raise data.max_refused_fraction:\n{listed}{more}"
        )


def _clean(
    examples: list[Example], tokenizer: Any, settings: DataSettings, report: DataReport
) -> tuple[list[Example], list[int]]:
    """Drop empty and over-long examples; return the rest with their token lengths."""
    kept, lengths = [], []
    for example in examples:
        if not (example.prompt.strip() and (example.answer.strip() or not example.is_chat)):
            report.empty += 1  # nothing to learn from: no input, or (for chats) no answer
            continue
        length = len(encode(tokenizer, example).input_ids)
        if length > settings.max_seq_len:
            report.too_long += 1
            continue
        lengths.append(length)
        kept.append(example)
    return kept, lengths


def _percentiles(lengths: list[int]) -> dict[str, int]:
    values = np.array(lengths)
    return {
        "count": len(lengths),
        "p50": int(np.percentile(values, 50)),
        "p90": int(np.percentile(values, 90)),
        "p99": int(np.percentile(values, 99)),
        "max": int(values.max()),
    }


def _normalized(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def _minhash(text: str) -> MinHash:
    words = _WORD.findall(text.lower())
    shingles = {" ".join(words[i : i + 3]) for i in range(max(len(words) - 2, 1))}
    signature = MinHash(num_perm=64, seed=1)
    for shingle in shingles:
        signature.update(shingle.encode())
    return signature


def _full_text(example: Example) -> str:
    return example.prompt + "\n" + example.answer if example.is_chat else example.text or ""


def _dedupe(splits: dict[str, list[Example]], settings: DataSettings, report: DataReport) -> None:
    """Drop exact and near duplicates across all given files (first occurrence wins)."""
    seen: set[str] = set()
    index = MinHashLSH(threshold=settings.near_duplicate_threshold, num_perm=64)
    for name, examples in splits.items():
        kept = []
        for position, example in enumerate(examples):
            text = _full_text(example)
            key = _normalized(text)
            if key in seen:
                report.exact_duplicates += 1
                continue
            signature = _minhash(text)
            if index.query(signature):
                report.near_duplicates += 1
                continue
            seen.add(key)
            index.insert(f"{name}:{position}", signature)
            kept.append(example)
        splits[name] = kept


def _split(cleaned: dict[str, list[Example]], settings: DataSettings) -> dict[str, list[Example]]:
    splits = {name: list(cleaned.get(name, [])) for name in SPLITS}
    missing = [name for name in ("validation", "test") if name not in cleaned]
    if not missing:
        return splits
    fractions = dict(zip(SPLITS, settings.split, strict=True))
    rng = random.Random(settings.seed)
    groups: dict[str | None, list[Example]] = defaultdict(list)
    for example in splits["train"]:
        groups[example.label].append(example)  # stratified by label (one group when there are none)
    carved: dict[str, list[Example]] = {name: [] for name in SPLITS}
    total_missing = sum(fractions[name] for name in missing)
    for _, members in sorted(groups.items(), key=lambda item: str(item[0])):
        rng.shuffle(members)
        taken = 0
        for name in missing:
            share = fractions[name] if total_missing else 0
            count = round(len(members) * share)
            carved[name].extend(members[taken : taken + count])
            taken += count
        carved["train"].extend(members[taken:])
    for name in SPLITS:
        rng.shuffle(carved[name])
    splits["train"] = carved["train"]
    for name in missing:
        splits[name] = carved[name]
    return splits


def _remove_leaks(
    train: list[Example], test: list[Example], settings: DataSettings, report: DataReport
) -> list[Example]:
    """Test rows whose prompt also appears, exactly or nearly, in train would flatter the tuned model."""
    exact = {_normalized(example.prompt) for example in train}
    index = MinHashLSH(threshold=settings.near_duplicate_threshold, num_perm=64)
    for position, example in enumerate(train):
        index.insert(str(position), _minhash(example.prompt))
    clean = []
    for example in test:
        if _normalized(example.prompt) in exact or index.query(_minhash(example.prompt)):
            report.leaked_from_train += 1
            continue
        clean.append(example)
    return clean


def _write_splits(splits: dict[str, list[Example]], out_dir: Path) -> dict[str, str]:
    folder = out_dir / "data"
    folder.mkdir(parents=True, exist_ok=True)
    hashes = {}
    for name, examples in splits.items():
        content = "".join(json.dumps(example.to_record(), ensure_ascii=False) + "\n" for example in examples)
        (folder / f"{name}.jsonl").write_text(content)
        hashes[name] = hashlib.sha256(content.encode()).hexdigest()
    return hashes


def _write_card(prepared: PreparedData, out_dir: Path) -> None:
    report = prepared.report
    card = {"dataset_sha256": prepared.dataset_sha256, "splits_sha256": prepared.split_sha256, **report.to_json()}
    (out_dir / "data" / "dataset_card.json").write_text(json.dumps(card, indent=2, default=str))
    lines = [
        "# Dataset card",
        "",
        f"- shape: `{report.shape}`",
        f"- rows read: {report.rows_read}; refused: {len(report.refused)}; empty: {report.empty}; "
        f"over-long: {report.too_long}",
        f"- duplicates removed: {report.exact_duplicates} exact, {report.near_duplicates} near",
        f"- test rows removed for leaking from train: {report.leaked_from_train}",
        f"- token lengths: {report.token_lengths}",
        f"- dataset sha256: `{prepared.dataset_sha256}`",
        "",
        "| split | rows | sha256 | labels |",
        "|---|---|---|---|",
    ]
    for name in SPLITS:
        labels = ", ".join(f"{k}: {v}" for k, v in sorted(report.labels.get(name, {}).items())) or "-"
        lines.append(f"| {name} | {report.splits[name]} | `{prepared.split_sha256[name][:16]}` | {labels} |")
    lines += ["", "| source file | rows | sha256 |", "|---|---|---|"]
    lines += [f"| {f.path} | {f.rows_read} | `{f.sha256[:16]}` |" for f in report.files]
    (out_dir / "data" / "dataset_card.md").write_text("\n".join(lines) + "\n")


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
