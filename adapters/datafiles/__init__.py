"""Dataset files as loradock reads them: formats, line-numbered refusals, and the shapes training accepts.

They live in the light core because both sides need them: the server checks a file the moment it is uploaded
(/v1/files), and training reads the same files with the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from adapters.datafiles.readers import DataError, Refusal, read_rows
from adapters.datafiles.shapes import detect_shape, to_examples


@dataclass(frozen=True)
class FileCheck:
    """What a dataset file holds: its shape, usable rows, and every refused line with its reason."""

    shape: str | None
    rows: int
    refused: list[Refusal]

    @property
    def ok(self) -> bool:
        return self.shape is not None and self.rows > 0 and not self.refused

    def summary(self, name: str, limit: int = 10) -> str:
        """Line-numbered reasons, as a job's error and a file's status_details show them."""
        if not self.refused:
            return f"{name}: {self.rows} rows in {self.shape} shape" if self.shape else f"{name}: no readable rows"
        listed = "; ".join(f"line {refusal.line}: {refusal.reason}" for refusal in self.refused[:limit])
        more = f"; and {len(self.refused) - limit} more" if len(self.refused) > limit else ""
        if self.shape is None:  # every line was refused: the reasons are what the user needs
            return f"{name}: no readable rows ({listed}{more})"
        return f"{name}: {len(self.refused)} invalid rows ({listed}{more})"


def check_file(path: Path, declared_shape: str | None = None) -> FileCheck:
    """Read and normalize a whole file; raises DataError only when the file cannot be read at all."""
    rows, refused = read_rows(path)
    if not rows:
        return FileCheck(None, 0, refused)
    shape = declared_shape or detect_shape(rows)
    examples, wrong = to_examples(rows, shape, None)  # type: ignore[arg-type]
    return FileCheck(shape, len(examples), sorted(refused + wrong, key=lambda refusal: refusal.line))


__all__ = ["DataError", "FileCheck", "Refusal", "check_file"]
