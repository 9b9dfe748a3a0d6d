"""Dataset files: formats, line-numbered refusals for what cannot be read, and the five shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from adapters.datafiles import check_file
from adapters.datafiles.readers import DataError, read_rows
from adapters.datafiles.shapes import detect_shape, to_examples


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


def chat(user: str, answer: str) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def test_malformed_lines_non_utf8_and_wrong_types_are_refused_with_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    good = json.dumps(chat("hi", "hello"))
    path.write_bytes(
        (good + "\n" + '{"messages": [\n' + "[1, 2]\n").encode()
        + b'{"messages": "caf\xe9"}\n'
        + (
            json.dumps({"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}) + "\n"
        ).encode()
        + (json.dumps({"messages": [{"role": "user", "content": "only a question"}]}) + "\n").encode()
    )
    rows, refused = read_rows(path)
    assert [r.line for r in rows] == [1, 5, 6]
    assert [(r.line, r.reason.split(":")[0]) for r in refused] == [
        (2, "malformed JSON"),
        (3, "expected a JSON object, got list"),
        (4, "not UTF-8 text (byte 18 is 0xe9)"),
    ]
    examples, wrong = to_examples(rows, detect_shape(rows), None)
    assert len(examples) == 1
    assert [(w.line, w.reason) for w in wrong] == [
        (5, "messages[0].content must be a string, got int"),
        (6, "the last message must be the assistant's answer"),
    ]


def test_every_shape_is_detected_and_normalized(tmp_path: Path) -> None:
    cases = {
        "messages": chat("q", "a"),
        "prompt_completion": {"prompt": "q", "completion": "a"},
        "instruction": {"instruction": "do", "input": "this", "output": "done"},
        "classification": {"text": "great product", "label": "positive"},
        "text": {"text": "plain domain text"},
    }
    for shape, row in cases.items():
        rows, _ = read_rows(write_jsonl(tmp_path / f"{shape}.jsonl", [row]))
        assert detect_shape(rows) == shape
        examples, wrong = to_examples(rows, shape, "be brief")
        assert not wrong and len(examples) == 1
    instruction = to_examples(read_rows(tmp_path / "instruction.jsonl")[0], "instruction", None)[0][0]
    assert instruction.chat()[-2:] == [
        {"role": "user", "content": "do\n\nthis"},
        {"role": "assistant", "content": "done"},
    ]
    label = to_examples(read_rows(tmp_path / "classification.jsonl")[0], "classification", "be brief")[0][0]
    assert label.label == "positive" and label.chat()[0] == {"role": "system", "content": "be brief"}


def test_csv_and_parquet(tmp_path: Path) -> None:
    csv_path = tmp_path / "data.csv"
    csv_path.write_text('prompt,completion\n"multi\nline",answer\nshort,\nbad,row,extra\n')
    rows, refused = read_rows(csv_path)
    assert [row.line for row in rows] == [2, 4]
    assert refused[0].line == 5 and "3 fields" in refused[0].reason
    parquet_path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "label": ["x", "y"]}), parquet_path)
    rows, refused = read_rows(parquet_path)
    assert detect_shape(rows) == "classification" and len(rows) == 2 and not refused


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_rows(empty)
    with pytest.raises(DataError, match="unknown data format"):
        read_rows(write_jsonl(tmp_path / "data.txt", ["x"]))
    with pytest.raises(DataError, match="no such data file"):
        read_rows(tmp_path / "missing.jsonl")
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="Parquet"):
        read_rows(broken)
    rows, _ = read_rows(write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "reply": "a"}]))
    with pytest.raises(DataError, match="cannot tell the dataset's shape"):
        detect_shape(rows)


def test_check_file_summarizes_with_line_numbers(tmp_path: Path) -> None:
    good = write_jsonl(tmp_path / "good.jsonl", [chat("q", "a"), chat("q2", "a2")])
    assert check_file(good).ok and check_file(good).summary("good.jsonl") == "good.jsonl: 2 rows in messages shape"
    bad = write_jsonl(tmp_path / "bad.jsonl", [chat("q", "a"), "{oops", {"messages": []}])
    check = check_file(bad)
    assert not check.ok and check.rows == 1
    assert check.summary("bad.jsonl").startswith("bad.jsonl: 2 invalid rows (line 2: malformed JSON")
