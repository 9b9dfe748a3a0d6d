"""Reading JSONL, CSV and Parquet rows with their line numbers, refusing what cannot be read.

Every refusal keeps the file's line number (Parquet: the row number) and a reason, so the validation report can
point at the exact place to fix.
"""

from __future__ import annotations

import csv
import io
import json
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


def _decoded_lines(path: Path) -> tuple[list[tuple[int, str]], list[Refusal]]:
    lines, refused = [], []
    with path.open("rb") as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                lines.append((number, raw.decode("utf-8")))
            except UnicodeDecodeError as exc:
                refused.append(Refusal(number, f"not UTF-8 text (byte {exc.start + 1} is {raw[exc.start]:#04x})"))
    return lines, refused


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
        if not isinstance(value, dict):
            refused.append(Refusal(number, f"expected a JSON object, got {type(value).__name__}"))
            continue
        rows.append(Row(number, value))
    return rows, sorted(refused, key=lambda refusal: refusal.line)


def _read_csv(path: Path) -> tuple[list[Row], list[Refusal]]:
    lines, refused = _decoded_lines(path)
    numbers = [number for number, _ in lines]
    reader = csv.reader(io.StringIO("".join(line for _, line in lines)))
    try:
        header = next(reader, None)
        if not header:
            raise DataError(f"{path}: the CSV file has no header row")
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
        table = pq.read_table(path)
    except (ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from exc
    return [Row(number, record) for number, record in enumerate(table.to_pylist(), start=1)], []
