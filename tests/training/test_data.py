"""Validating, cleaning and splitting data with the base tokenizer; refused rows train nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from adapters.datafiles.readers import DataError
from adapters.datafiles.shapes import to_examples
from training.data.prepare import DataSettings, prepare_data
from training.data.tokenize import IGNORE, check_stop_token, encode
from training.demo_task import generate


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def chat(user: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


@pytest.mark.integration
class TestPrepare:
    def test_report_counts_duplicates_and_splits_are_stratified(self, demo_tokenizer: Any, tmp_path: Path) -> None:
        rows = [
            {
                "text": f"ticket number {i} about {'billing' if i % 3 else 'shipping'} issues",
                "label": "a" if i % 3 else "b",
            }
            for i in range(60)
        ]
        rows += [rows[0], {"text": rows[1]["text"].upper(), "label": "a"}]  # an exact and a case-only duplicate
        rows += [{"text": "", "label": "a"}]
        path = write_jsonl(tmp_path / "labels.jsonl", rows)
        prepared = prepare_data(DataSettings(train_file=str(path), seed=3), demo_tokenizer, tmp_path / "run")
        report = prepared.report
        assert report.rows_read == 63 and report.exact_duplicates == 2 and report.empty == 1
        assert sum(report.splits.values()) == 60 - report.near_duplicates - report.leaked_from_train
        for split in ("train", "validation", "test"):
            labels = report.labels[split]
            assert set(labels) == {"a", "b"}, (split, labels)  # stratified: both classes everywhere
        assert report.token_lengths["max"] >= report.token_lengths["p50"] > 0
        card = json.loads((tmp_path / "run" / "data" / "dataset_card.json").read_text())
        assert card["dataset_sha256"] == prepared.dataset_sha256 and len(card["splits_sha256"]) == 3
        again = prepare_data(DataSettings(train_file=str(path), seed=3), demo_tokenizer, tmp_path / "again")
        assert again.dataset_sha256 == prepared.dataset_sha256  # seeded: the same splits every time

    def test_refused_rows_stop_training_unless_tolerated(self, demo_tokenizer: Any, tmp_path: Path) -> None:
        path = write_jsonl(tmp_path / "d.jsonl", [chat(f"q{i}", f"a{i}") for i in range(20)] + ["{oops", '{"x": 1}'])
        with pytest.raises(DataError, match=r"2 of 22 rows were refused") as refused:
            prepare_data(DataSettings(train_file=str(path)), demo_tokenizer, tmp_path / "run")
        assert "d.jsonl:21: malformed JSON" in str(refused.value) and "d.jsonl:22: missing field" in str(refused.value)
        assert not (tmp_path / "run" / "data").exists()
        tolerated = prepare_data(
            DataSettings(train_file=str(path), max_refused_fraction=0.2), demo_tokenizer, tmp_path / "ok"
        )
        assert len(tolerated.report.refused) == 2

    def test_single_class_labels_and_leakage(self, demo_tokenizer: Any, tmp_path: Path) -> None:
        one_class = write_jsonl(
            tmp_path / "one.jsonl", [{"text": f"sample {i} text here", "label": "same"} for i in range(20)]
        )
        with pytest.raises(DataError, match="single class"):
            prepare_data(DataSettings(train_file=str(one_class)), demo_tokenizer, tmp_path / "run")
        train = write_jsonl(
            tmp_path / "train.jsonl", [chat(f"question {i} about the weather in town {i}", "ok") for i in range(30)]
        )
        test = write_jsonl(
            tmp_path / "test.jsonl",
            [chat("question 3 about the weather in town 3", "ok"), chat("a brand new unrelated prompt", "ok")],
        )
        settings = DataSettings(train_file=str(train), test_file=str(test), near_duplicate_threshold=0.8)
        prepared = prepare_data(settings, demo_tokenizer, tmp_path / "leak")
        assert prepared.report.splits["test"] == 1 and prepared.report.exact_duplicates == 1

    def test_loss_covers_assistant_turns_and_their_end_token(self, demo_tokenizer: Any) -> None:
        example = to_examples(
            [type("R", (), {"line": 1, "data": generate(1)[0]})()],
            "messages",
            None,  # type: ignore[list-item]
        )[0][0]
        encoded = encode(demo_tokenizer, example)
        supervised = [token for token, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE]
        assert demo_tokenizer.decode(supervised) == example.answer + "<|im_end|>\n"
        check_stop_token(demo_tokenizer, encoded)
        assert encoded.labels[0] == IGNORE
