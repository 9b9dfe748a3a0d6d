"""Property-based fuzzing of the dataset readers: no file content may crash them, and valid rows round-trip.

The contract: whatever bytes a user uploads, `check_file` answers with a `FileCheck` (refusals naming the line
and what is wrong) or a `DataError` (the whole file is unreadable); never another exception. Rows that are valid
come back exactly as written, from JSONL, CSV and Parquet alike.
"""

from __future__ import annotations

import csv
import io
import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from adapters.datafiles import FileCheck, check_file
from adapters.datafiles.readers import DataError, Row, read_rows
from adapters.datafiles.shapes import SHAPES, detect_shape, to_examples

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
FIELDS = (
    "messages",
    "prompt",
    "completion",
    "chosen",
    "rejected",
    "instruction",
    "input",
    "output",
    "text",
    "label",
    "preferred_output",
    "non_preferred_output",
    "role",
    "content",
)


@contextmanager
def scratch() -> Iterator[Path]:
    """A fresh folder per example (hypothesis runs many examples inside one test call)."""
    with tempfile.TemporaryDirectory() as folder:
        yield Path(folder)


def checked(path: Path, lines: int | None = None) -> FileCheck | None:
    """`check_file`, which may only answer or raise DataError; refusals must name a real line and a reason."""
    try:
        check = check_file(path)
    except DataError as exc:
        assert str(exc)
        return None
    for refusal in check.refused:
        assert isinstance(refusal.reason, str) and refusal.reason
        assert refusal.line >= 1
        if lines is not None:
            assert refusal.line <= lines
    assert isinstance(check.summary(path.name), str)
    return check


# Hostile content ------------------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(FIELDS) | st.text(), children),
    max_leaves=12,
)
json_objects = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5)
message_lists = st.lists(
    st.fixed_dictionaries(
        {},
        optional={
            "role": st.sampled_from(["system", "user", "assistant", "tool", ""]) | json_values,
            "content": json_values,
        },
    ),
    max_size=4,
)
chat_objects = st.fixed_dictionaries({"messages": message_lists | json_values})
odd_lines = st.sampled_from(
    [
        b"",
        b"\xef\xbb\xbf",
        b"\x00",
        b"\xff\xfe",
        b"[" * 5000,
        b'{"a":' * 5000,
        b'{"text": ' + b"9" * 5000 + b"}",
        b'{"text": 1e99999}',
        b'{"text": NaN, "label": -Infinity}',
        b'{"text": "\\ud800"}',
        b'{"\\udfff": "x", "text": "y"}',
        b'{"text": "\\u0000"}',
        b'{"text": "a"}{"text": "b"}',
        b'"just a string"',
        b"\r",
        b" \t ",
    ]
)


def encoded(value: Any, ensure_ascii: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ensure_ascii).encode()


jsonl_lines = st.one_of(
    st.builds(encoded, json_objects | chat_objects | json_values, st.booleans()),
    odd_lines,
    st.binary(max_size=40).map(lambda raw: raw.replace(b"\n", b"")),
)


@FUZZ
@given(st.binary(max_size=600), st.sampled_from(SUFFIXES))
@example(b"\xef\xbb\xbf", ".jsonl")
@example(b"\n\n\n", ".csv")
@example(b"PAR1", ".parquet")
@example(b"PAR1\x00\x00\x00\x00PAR1", ".parquet")
def test_random_bytes_never_crash_a_reader(data: bytes, suffix: str) -> None:
    with scratch() as folder:
        path = folder / f"data{suffix}"
        path.write_bytes(data)
        checked(path, lines=data.count(b"\n") + data.count(b"\r") + 1)


def is_blank(line: bytes, *, first: bool) -> bool:
    try:
        text = line.decode()
    except UnicodeDecodeError:
        return False
    return not (text.removeprefix("\ufeff") if first else text).strip()  # only one BOM, only on line 1


@FUZZ
@given(st.lists(jsonl_lines, min_size=1, max_size=8), st.sampled_from([b"\n", b"\r\n"]), st.booleans())
def test_every_jsonl_line_is_a_row_or_a_refusal_on_its_own_line(lines: list[bytes], end: bytes, bom: bool) -> None:
    with scratch() as folder:
        path = folder / "data.jsonl"
        if bom:
            lines = [b"\xef\xbb\xbf" + lines[0], *lines[1:]]
        path.write_bytes(end.join(lines) + end)
        try:
            rows, refused = read_rows(path)
        except DataError:
            assert path.stat().st_size == 0
            return
        blank = {number for number, line in enumerate(lines, start=1) if is_blank(line, first=number == 1)}
        seen = [row.line for row in rows] + [refusal.line for refusal in refused]
        assert len(seen) == len(set(seen)), "a line was both read and refused, or refused twice"
        assert set(seen) == set(range(1, len(lines) + 1)) - blank
        for row in rows:
            assert isinstance(row.data, dict)
            json.dumps(row.data, ensure_ascii=False).encode()  # what training writes must be encodable
        checked(path, lines=len(lines))


csv_text = st.text(alphabet=st.sampled_from(list('ab,"\r\n\x00 \ufeff\u2028é')), max_size=80)


@FUZZ
@given(st.sampled_from(["prompt,completion", "text,label", "text", '"a""b",c', "", "prompt,prompt"]), csv_text)
def test_csv_with_odd_quoting_never_crashes(header: str, body: str) -> None:
    with scratch() as folder:
        path = folder / "data.csv"
        data = f"{header}\n{body}".encode()
        path.write_bytes(data)
        checked(path, lines=data.count(b"\n") + data.count(b"\r") + 1)


parquet_columns = st.sampled_from(
    [
        pa.array(["a", None]),
        pa.array([1, 2**62]),
        pa.array([1.5, float("nan")]),
        pa.array([b"\xff", b""]),
        pa.array([[1, 2], None]),
        pa.array([{"role": "user", "content": "x"}, None]),
        pa.array([[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], []]),
        pa.array([0, 2**62], type=pa.timestamp("us")),
        pa.array([0, 2**62], type=pa.timestamp("ns", tz="UTC")),
        pa.array([0, 2**31 - 1], type=pa.date32()),
        pa.array([0, 2**62], type=pa.duration("us")),
        pa.array([0, 10**38 - 1], type=pa.decimal128(38, 0)),
        pa.array([True, False]),
        pa.array(["x", "y"]).dictionary_encode(),
    ]
)


@FUZZ
@given(
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), parquet_columns, min_size=1, max_size=4),
    st.integers(min_value=0, max_value=4096),
    st.binary(min_size=0, max_size=8),
    st.booleans(),
)
def test_parquet_of_any_type_or_corruption_never_crashes(
    columns: dict[str, pa.Array], cut: int, junk: bytes, corrupt: bool
) -> None:
    with scratch() as folder:
        path = folder / "data.parquet"
        pq.write_table(pa.table(columns), path)
        if corrupt:
            data = path.read_bytes()
            cut %= len(data)
            path.write_bytes(data[:cut] + junk + data[cut + len(junk) :])
        checked(path, lines=2)


@FUZZ
@given(st.lists(json_objects | chat_objects, min_size=1, max_size=6), st.sampled_from(SHAPES), st.none() | st.text())
@example([{"prompt": 5, "chosen": "a", "rejected": "b"}], "preference", None)
@example([{"prompt": [], "chosen": "a", "rejected": "b"}], "preference", None)
@example([{"input": {}, "preferred_output": "a", "non_preferred_output": "b"}], "preference", None)
@example([{"text": "t", "label": float("nan")}, {"text": "t", "label": float("inf")}], "classification", None)
@example([{"messages": [{"role": "x" * 10_000, "content": "c"}]}], "messages", None)
def test_shapes_refuse_wrong_types_row_by_row(datas: list[dict[str, Any]], shape: str, system: str | None) -> None:
    rows = [Row(number, data) for number, data in enumerate(datas, start=1)]
    with suppress(DataError):
        detect_shape(rows)
    examples, refused = to_examples(rows, shape, system)  # type: ignore[arg-type]
    assert len(examples) + len(refused) == len(rows)
    assert sorted([example.line for example in examples] + [refusal.line for refusal in refused]) == [
        row.line for row in rows
    ]
    for refusal in refused:
        assert refusal.reason and len(refusal.reason) < 300
    for item in examples:
        assert item.to_record()
        if item.is_chat:
            assert all(isinstance(content, str) for _, content in item.messages)
            assert item.messages[-1][0] == "assistant"
            assert len(item.messages) >= 2 or shape == "messages"


# Valid rows round-trip ------------------------------------------------------------------------------------------

texts = st.text(max_size=30)
prompt_completions = st.lists(
    st.fixed_dictionaries({"prompt": texts, "completion": texts}).filter(lambda row: any(row.values())),
    min_size=1,
    max_size=6,
)
chats = st.lists(
    st.builds(
        lambda turns, answer: {
            "messages": [{"role": role, "content": content} for role, content in turns]
            + [{"role": "assistant", "content": answer}]
        },
        st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), texts), max_size=3),
        texts,
    ),
    min_size=1,
    max_size=5,
)


def write(path: Path, rows: list[dict[str, Any]], *, bom: bool = False, crlf: bool = False) -> None:
    if path.suffix == ".jsonl":
        end = "\r\n" if crlf else "\n"
        path.write_bytes(("\ufeff" if bom else "").encode() + "".join(json.dumps(r) + end for r in rows).encode())
    elif path.suffix == ".csv":
        buffer = io.StringIO(newline="")
        # Python 3.11's writer quotes a lone \r only when it is part of the line terminator: quote all for \n
        writer = csv.DictWriter(
            buffer,
            fieldnames=list(rows[0]),
            lineterminator="\r\n" if crlf else "\n",
            quoting=csv.QUOTE_MINIMAL if crlf else csv.QUOTE_ALL,
        )
        writer.writeheader()
        writer.writerows(rows)
        path.write_bytes(("\ufeff" if bom else "").encode() + buffer.getvalue().encode())
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)


@FUZZ
@given(prompt_completions, st.sampled_from([".jsonl", ".csv", ".parquet"]), st.booleans(), st.booleans())
@example([{"prompt": "a\rb", "completion": "\x00"}], ".csv", False, False)
@example([{"prompt": "x" * 200_000, "completion": "y"}], ".csv", True, True)
def test_prompt_completion_rows_round_trip(rows: list[dict[str, str]], suffix: str, bom: bool, crlf: bool) -> None:
    with scratch() as folder:
        path = folder / f"data{suffix}"
        write(path, rows, bom=bom, crlf=crlf)
        read, refused = read_rows(path)
        assert not refused
        assert [row.data for row in read] == rows
        check = check_file(path)
        assert (check.shape, check.rows, check.refused) == ("prompt_completion", len(rows), [])
        examples, _ = to_examples(read, "prompt_completion", None)
        assert [(e.prompt, e.answer) for e in examples] == [(r["prompt"], r["completion"]) for r in rows]


@FUZZ
@given(chats, st.sampled_from([".jsonl", ".parquet"]), st.booleans())
def test_chat_rows_round_trip(rows: list[dict[str, Any]], suffix: str, bom: bool) -> None:
    with scratch() as folder:
        path = folder / f"data{suffix}"
        write(path, rows, bom=bom)
        read, refused = read_rows(path)
        assert not refused
        assert [row.data for row in read] == rows
        check = check_file(path)
        assert (check.shape, check.rows, check.refused) == ("messages", len(rows), [])
        examples, _ = to_examples(read, "messages", None)
        assert [e.chat() for e in examples] == [row["messages"] for row in rows]
