"""From feedback to training rows: what `loradock feedback export` writes and `loradock retrain` trains on.

SFT rows teach the corrected answer, or the logged answer where it was rated well. DPO rows prefer the correction
over the logged answer. Each completion counts once (several sources: the newest correction wins, and a
completion is only "well rated" if every source rated it so); duplicate rows are dropped; every completion left
out is counted under its reason, so the numbers add up.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select

from adapters.database import Database
from adapters.tables import Feedback, Interaction

ExportFormat = Literal["sft", "dpo"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("sft", "dpo")


@dataclass
class ExportRow:
    data: dict[str, Any]
    """The JSONL row: {"messages"} (SFT) or {"prompt", "chosen", "rejected"} (DPO)."""
    interaction_id: str
    feedback_ids: list[str]
    kind: str
    """corrected or well_rated."""


@dataclass
class FeedbackExport:
    rows: list[ExportRow] = field(default_factory=list)
    kept: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    @property
    def interaction_ids(self) -> list[str]:
        return [row.interaction_id for row in self.rows]

    @property
    def feedback_ids(self) -> list[str]:
        return [feedback_id for row in self.rows for feedback_id in row.feedback_ids]

    def write(self, path: Path) -> Path:
        """The rows as JSONL, written whole or not at all."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.partial")
        with partial.open("w") as stream:
            for row in self.rows:
                stream.write(json.dumps(row.data, ensure_ascii=False) + "\n")
        partial.replace(path)
        return path


def export_feedback(
    database: Database,
    adapter: str,
    *,
    fmt: ExportFormat,
    since: datetime | None = None,
    min_score: float = 0.5,
    version: int | None = None,
) -> FeedbackExport:
    """Rows for `adapter` (any version, or one) from feedback updated since `since`."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    with database.read() as session:
        query = (
            select(Feedback, Interaction)
            .join(Interaction)
            .where(Interaction.adapter == adapter, Interaction.shadow_of.is_(None))
            .order_by(Interaction.created_at, Feedback.updated_at)
        )
        if version is not None:
            query = query.where(Interaction.version == version)
        if since is not None:
            query = query.where(Feedback.updated_at >= since)
        grouped: dict[str, tuple[Interaction, list[Feedback]]] = {}
        for feedback, interaction in session.execute(query).all():
            grouped.setdefault(interaction.id, (interaction, []))[1].append(feedback)
        result = FeedbackExport()
        seen: set[str] = set()
        for interaction, records in grouped.values():
            reason, row = _row(interaction, records, fmt, min_score)
            if row is None:
                result.skipped[reason] += 1
                continue
            key = json.dumps(row.data, sort_keys=True)
            if key in seen:
                result.skipped["duplicate"] += 1
                continue
            seen.add(key)
            result.rows.append(row)
            result.kept[row.kind] += 1
        return result


def _row(
    interaction: Interaction, records: list[Feedback], fmt: ExportFormat, min_score: float
) -> tuple[str, ExportRow | None]:
    if interaction.route != "chat":
        return "not a chat completion", None
    messages = interaction.request.get("messages") or []
    newest = max(records, key=lambda record: record.updated_at)
    corrections = [record for record in records if record.correction]
    correction = max(corrections, key=lambda record: record.updated_at) if corrections else None
    index = (correction or newest).choice_index
    logged = interaction.outputs[index] if index < len(interaction.outputs) else ""
    ids = [record.id for record in records]
    if fmt == "dpo":
        if correction is None:
            return "no correction (DPO needs one)", None
        if correction.correction == logged:
            return "correction equals the logged answer", None
        data = {"prompt": messages, "chosen": correction.correction, "rejected": logged}
        return "", ExportRow(data, interaction.id, ids, "corrected")
    if correction is not None:
        answer, kind = correction.correction, "corrected"
    elif min(record.score for record in records) < min_score:
        return "rated below --min-score, no correction", None
    elif (interaction.finish_reasons[index] if index < len(interaction.finish_reasons) else None) == "length":
        return "answer cut off at max_tokens", None
    else:
        answer, kind = logged, "well_rated"
    data = {"messages": [*messages, {"role": "assistant", "content": answer}]}
    return "", ExportRow(data, interaction.id, ids, kind)
