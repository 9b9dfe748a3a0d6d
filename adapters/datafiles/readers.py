"""Reading JSONL, CSV and Parquet rows with their line numbers, refusing what cannot be read.

Every refusal keeps the file's line number (Parquet: the row number) and a reason, so the validation report can
point at the exact place to fix.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """The dataset cannot be used; the message says what is wrong and where."""


@dataclass(frozen=True)
class Row:
    line: int
    data: dict[str, Any]


@dataclass(frozen=True)
class Refusal:
    line: int
    reason: str


SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte order mark that Excel and Notepad put at the start of a file."""
MAX_DEPTH = 64
"""Deepest nesting of lists and objects read; real rows (chats, tool calls) are a few levels deep, and deeper
values would overflow the recursion of json, repr and the tokenizers downstream."""
MAX_CSV_FIELD = (1 << 31) - 1
"""csv refuses fields over 128 KiB by default, which long documents of the text shape are."""


def read_rows(path: Path) -> tuple[list[Row], list[Refusal]]:
    """The file's records as dicts, and the lines that could not be read."""
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return _read_jsonl(path)
    if suffix == ".csv":
        return _read_csv(path)
    if suffix == ".parquet":
        return _read_parquet(path)
    raise DataError(f"{path}: unknown data format {suffix or '(none)'}; use one of {', '.join(SUFFIXES)}")


def _decoded_lines(path: Path, *, universal: bool = False) -> tuple[list[tuple[int, str]], list[Refusal]]:
    """The file's lines with their numbers; `universal` also ends lines at a lone \\r (CSV files from old Macs)."""
    lines, refused = [], []
    with path.open("rb") as stream:
        raw_lines: Iterable[bytes] = stream.read().splitlines(keepends=True) if universal else stream
        for number, raw in enumerate(raw_lines, start=1):
            skipped = len(BOM) if number == 1 and raw.startswith(BOM) else 0
            try:
                lines.append((number, raw[skipped:].decode("utf-8")))
            except UnicodeDecodeError as exc:
                where = skipped + exc.start
                refused.append(Refusal(number, f"not UTF-8 text (byte {where + 1} is {raw[where]:#04x})"))
    return lines, refused


def _unusable(value: Any) -> str | None:
    """Why a decoded value cannot be trained on (too deep, or text that is not valid Unicode), else None."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as exc:
                return f"text holds an unpaired surrogate {item[exc.start]!r}, which is not valid Unicode"
        elif isinstance(item, dict | list):
            if depth > MAX_DEPTH:
                return f"values nested more than {MAX_DEPTH} levels deep"
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def _read_jsonl(path: Path) -> tuple[list[Row], list[Refusal]]:
    lines, refused = _decoded_lines(path)
    rows = []
    for number, text in lines:
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            refused.append(Refusal(number, f"malformed JSON: {exc.msg} (column {exc.colno})"))
            continue
        except RecursionError:
            refused.append(Refusal(number, f"malformed JSON: values nested more than {MAX_DEPTH} levels deep"))
            continue
        except ValueError:  # Python refuses to convert integers this long (a guard against slow parsing)
            digits = sys.get_int_max_str_digits()
            refused.append(Refusal(number, f"malformed JSON: a number has more than {digits} digits"))
            continue
        if not isinstance(value, dict):
            refused.append(Refusal(number, f"expected a JSON object, got {type(value).__name__}"))
            continue
        if problem := _unusable(value):
            refused.append(Refusal(number, problem))
            continue
        rows.append(Row(number, value))
    return rows, sorted(refused, key=lambda refusal: refusal.line)


def _read_csv(path: Path) -> tuple[list[Row], list[Refusal]]:
    lines, refused = _decoded_lines(path, universal=True)
    if refused and refused[0].line == 1:
        raise DataError(f"{path}: line 1 (the header): {refused[0].reason}")
    numbers = [number for number, _ in lines]
    # newline="" splits lines exactly where bytes.splitlines did, so line_num indexes `numbers`
    reader = csv.reader(io.StringIO("".join(line for _, line in lines), newline=""))
    csv.field_size_limit(MAX_CSV_FIELD)  # process-wide, and nothing else in loradock reads CSV
    try:
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: the CSV file has no header row")
        if repeated := sorted({name for name in header if header.count(name) > 1}):
            raise DataError(f"{path}: line 1: the header names the column(s) {repeated} more than once")
        rows = []
        consumed = reader.line_num
        for values in reader:
            line = numbers[consumed]  # the file line this record starts on (quoted fields may span lines)
            consumed = reader.line_num
            if not any(values):
                continue
            if len(values) != len(header):
                refused.append(Refusal(line, f"{len(values)} fields where the header has {len(header)}"))
                continue
            rows.append(Row(line, dict(zip(header, values, strict=True))))
    except csv.Error as exc:
        raise DataError(
            f"{path}: line {numbers[min(reader.line_num, len(numbers)) - 1]}: not valid CSV ({exc})"
        ) from exc
    return rows, sorted(refused, key=lambda refusal: refusal.line)


def _read_parquet(path: Path) -> tuple[list[Row], list[Refusal]]:
    import pyarrow.parquet as pq
    from pyarrow import ArrowException

    try:
        records = pq.read_table(path).to_pylist()
    except (ArrowException, OSError, ValueError, OverflowError) as exc:  # to_pylist: dates out of Python's range
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    rows, refused = [], []
    for number, record in enumerate(records, start=1):
        if problem := _unusable(record):
            refused.append(Refusal(number, problem))
        else:
            rows.append(Row(number, record))
    return rows, refused
