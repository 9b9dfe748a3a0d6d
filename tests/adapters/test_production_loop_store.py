"""The production loop's storage on SQLite and PostgreSQL: redaction, feedback, export, gates, promotion, rollback,
retention and deletion requests."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from adapters.database import open_database
from adapters.errors import ConflictError, InvalidInputError, NotFoundError
from adapters.feedback import FeedbackFilter, FeedbackInput, FeedbackStore
from adapters.feedback_export import export_feedback
from adapters.hub import Hub
from adapters.interactions import LEARNED_FROM, InteractionRecord, InteractionStore
from adapters.loop_commands import register_loop_commands
from adapters.naming import CANDIDATE_ALIAS, DEFAULT_ALIAS, SHADOW_ALIAS
from adapters.promotion import COMPARISON, promote, rollback
from adapters.records import AliasTarget
from adapters.redaction import Redactor
from adapters.settings import Settings
from adapters.sources import stage_source
from adapters.tables import utcnow
from tests.adapter_factory import write_adapter
from tests.adapters.synthetic import synthetic_base

BASE = synthetic_base()
SYSTEM = {"role": "system", "content": "Classify."}


def record(completion_id: str, question: str, answer: str, **fields: object) -> InteractionRecord:
    values: dict[str, object] = dict(
        id=completion_id,
        model="tickets@1",
        adapter="tickets",
        version=1,
        tenant="apps",
        route="chat",
        request={"messages": [SYSTEM, {"role": "user", "content": question}]},
        parameters={"temperature": 0},
        outputs=[answer],
        finish_reasons=["stop"],
        prompt_tokens=10,
        completion_tokens=5,
        latency_ms=12.0,
        ttft_ms=3.0,
    )
    values.update(fields)
    return InteractionRecord(**values)  # type: ignore[arg-type]


@pytest.fixture
def hub(database_url: str, tmp_path: Path) -> Hub:
    settings = Settings(home=tmp_path / "home", database_url=database_url, max_lora_rank=16)
    opened = Hub.open(settings)
    yield opened  # type: ignore[misc]
    opened.close()


def test_redaction_replaces_emails_phones_and_valid_card_numbers_only() -> None:
    redactor = Redactor(custom={"ticket": r"TCK-\d+"})
    text, count = redactor.text(
        "Write to ana.b@example.co.uk or call +44 20 7946 0958; card 4111 1111 1111 1111, "
        "order #48213 for $12.50, not a card 1234567812345678, ref TCK-991"
    )
    assert text == (
        "Write to [EMAIL] or call [PHONE]; card [CARD], order #48213 for $12.50, not a card 1234567812345678, "
        "ref [TICKET]"
    )
    assert count == 4
    nested, nested_count = redactor.value({"messages": [{"role": "user", "content": "me@x.io"}], "n": 3})
    assert nested == {"messages": [{"role": "user", "content": "[EMAIL]"}], "n": 3} and nested_count == 1


def test_feedback_is_one_record_per_completion_and_source(database_url: str) -> None:
    database = open_database(database_url)
    InteractionStore(database).write([record("c1", "q1", "a1"), record("c2", "q2", "a2", tenant="other")], None)
    store = FeedbackStore(database)
    first, created = store.record(FeedbackInput(completion_id="c1", rating="down"), tenant="apps", created_by="t")
    again, created_again = store.record(
        FeedbackInput(completion_id="c1", score=0.2, correction="fixed"), tenant="apps", created_by="t"
    )
    other_source, _ = store.record(
        FeedbackInput(completion_id="c1", rating="up", source="reviewer"), tenant=None, created_by="admin"
    )
    assert created and not created_again and first.id == again.id != other_source.id
    assert (again.score, again.rating, again.correction) == (0.2, "down", "fixed")
    for missing, tenant in (("nope", "apps"), ("c2", "apps")):  # unknown, and another tenant's: the same 404
        with pytest.raises(NotFoundError, match="no logged completion"):
            store.record(FeedbackInput(completion_id=missing, rating="up"), tenant=tenant, created_by="t")
    with pytest.raises(InvalidInputError, match="out of range"):
        store.record(FeedbackInput(completion_id="c1", rating="up", index=3), tenant="apps", created_by="t")
    for bad in (
        {"completion_id": "c1"},
        {"completion_id": "c1", "score": 1.5},
        {"completion_id": "c1", "rating": "up", "score": 0.1},
    ):
        with pytest.raises(ValueError):
            FeedbackInput.model_validate(bad)
    page = store.list(FeedbackFilter(adapter="tickets", corrected=True))
    assert [item.id for item in page.data] == [first.id]
    database.dispose()


def test_export_keeps_exactly_the_rows_feedback_supports(database_url: str, tmp_path: Path) -> None:
    database = open_database(database_url)
    InteractionStore(database).write(
        [
            record("good", "q-good", "right"),
            record("wrong", "q-wrong", "bad answer"),
            record("meh", "q-meh", "meh"),
            record("cut", "q-cut", "cut off", finish_reasons=["length"]),
            record("twin", "q-good", "right"),
            record("text", "q-text", "x", route="completions", request={"prompt": "q-text"}),
            record("other", "q-other", "y", adapter="another"),
        ],
        None,
    )
    store = FeedbackStore(database)
    for completion_id, body in (
        ("good", {"rating": "up"}),
        ("wrong", {"rating": "down", "correction": "right answer"}),
        ("meh", {"score": 0.3}),
        ("cut", {"rating": "up"}),
        ("twin", {"rating": "up"}),
        ("text", {"rating": "up"}),
        ("other", {"rating": "up"}),
    ):
        store.record(FeedbackInput(completion_id=completion_id, **body), tenant=None, created_by="t")
    sft = export_feedback(database, "tickets", fmt="sft")
    assert [row.data["messages"][-1]["content"] for row in sft.rows] == ["right", "right answer"]
    assert dict(sft.kept) == {"well_rated": 1, "corrected": 1}
    assert dict(sft.skipped) == {
        "rated below --min-score, no correction": 1,
        "answer cut off at max_tokens": 1,
        "duplicate": 1,
        "not a chat completion": 1,
    }
    assert len(sft.rows) + sum(sft.skipped.values()) == 6
    dpo = export_feedback(database, "tickets", fmt="dpo")
    assert [row.data for row in dpo.rows] == [
        {"prompt": [SYSTEM, {"role": "user", "content": "q-wrong"}], "chosen": "right answer", "rejected": "bad answer"}
    ]
    written = sft.write(tmp_path / "out" / "sft.jsonl")
    assert [json.loads(line) for line in written.read_text().splitlines()] == [row.data for row in sft.rows]
    assert not export_feedback(database, "tickets", fmt="sft", since=utcnow() + timedelta(days=1)).rows
    database.dispose()


def test_retention_deletes_expired_interactions_with_their_feedback(database_url: str) -> None:
    database = open_database(database_url)
    interactions = InteractionStore(database)
    old = utcnow() - timedelta(days=10)
    interactions.write(
        [
            record("old-kept-short", "q", "a", created_at=old),
            record("old-default", "q", "a", adapter="another", created_at=old),
            record("new", "q", "a"),
        ],
        None,
    )
    FeedbackStore(database).record(
        FeedbackInput(completion_id="old-kept-short", rating="up"), tenant=None, created_by="t"
    )
    interactions.set_policy("tickets", 0.5, 7, updated_by="t")
    assert interactions.delete_expired(default_retention_days=30) == 1
    with pytest.raises(NotFoundError):
        interactions.get("old-kept-short")
    assert interactions.get("old-default").id == "old-default"
    assert not FeedbackStore(database).list(FeedbackFilter()).data
    with pytest.raises(InvalidInputError):
        interactions.set_policy("tickets", 1.5, 7, updated_by="t")
    database.dispose()


def _version(hub: Hub, tmp_path: Path, seed: int, metadata: dict[str, object] | None = None) -> int:
    folder = write_adapter(tmp_path / f"src-{seed}", BASE, seed=seed)
    staged = stage_source(hub.store, str(folder), hub.registry.limits)
    return hub.registry.register("tickets", staged, BASE, created_by="t", metadata=metadata).version


def _comparison(against: str, prod: float, candidate: float) -> dict[str, object]:
    return {
        COMPARISON: {
            "against": against,
            "sets": {"original_test": {"metric": "exact_match", "count": 10, "prod": prod, "candidate": candidate}},
        }
    }


def test_promotion_needs_passing_gates_and_rollback_is_one_step(hub: Hub, tmp_path: Path) -> None:
    registry = hub.registry
    _version(hub, tmp_path, 1)
    registry.set_alias("tickets", DEFAULT_ALIAS, [AliasTarget(version=1)], updated_by="t")
    worse = _version(hub, tmp_path, 2, _comparison("tickets@1", prod=0.9, candidate=0.8))
    registry.set_alias("tickets", CANDIDATE_ALIAS, [AliasTarget(version=worse)], updated_by="t")
    refused = promote(hub, "tickets", margin=0.02)
    assert refused.outcome == "refused" and "original_test" in refused.reason
    assert _prod(hub) == [1]

    better = _version(hub, tmp_path, 3, _comparison("tickets@1", prod=0.9, candidate=0.89))
    registry.set_alias("tickets", CANDIDATE_ALIAS, [AliasTarget(version=better)], updated_by="t")
    canary = promote(hub, "tickets", margin=0.02, canary=0.1)
    assert canary.outcome == "canary" and _prod(hub) == [1, 3]
    assert promote(hub, "tickets", margin=0.02).outcome == "promoted"
    assert _prod(hub) == [3]
    assert CANDIDATE_ALIAS not in {alias.name for alias in registry.get_adapter("tickets").aliases}
    rollback(hub, "tickets")
    assert _prod(hub) == [1]  # past the canary split, straight back to the old version

    stale = _version(hub, tmp_path, 4, _comparison("tickets@3", prod=0.9, candidate=0.95))
    registry.set_alias("tickets", CANDIDATE_ALIAS, [AliasTarget(version=stale)], updated_by="t")
    with pytest.raises(ConflictError, match="compared with tickets@3, but prod is now tickets@1"):
        promote(hub, "tickets", margin=0.02)


def test_the_promote_command_refuses_a_worse_candidate_with_exit_1_and_rollback_moves_prod_back(
    hub: Hub, tmp_path: Path
) -> None:
    """What `loradock promote` and `loradock rollback` print and return, on the hub's own database."""
    registry = hub.registry
    _version(hub, tmp_path, 1)
    registry.set_alias("tickets", DEFAULT_ALIAS, [AliasTarget(version=1)], updated_by="t")
    better = _version(hub, tmp_path, 2, _comparison("tickets@1", prod=0.5, candidate=0.9))
    registry.set_alias("tickets", CANDIDATE_ALIAS, [AliasTarget(version=better)], updated_by="t")
    app = typer.Typer()
    register_loop_commands(app)
    env = {
        "LORADOCK_HOME": str(hub.settings.home),
        "LORADOCK_DATABASE_URL": hub.settings.database_url,
        "LORADOCK_MAX_LORA_RANK": str(hub.settings.max_lora_rank),
        "COLUMNS": "200",
    }

    def loradock(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, list(args), env=env)
        return result.exit_code, result.output

    code, output = loradock("promote", "tickets")
    assert code == 0 and "promoted: tickets:prod is now tickets@2" in output, output
    worse = _version(hub, tmp_path, 3, _comparison("tickets@2", prod=0.9, candidate=0.2))
    registry.set_alias("tickets", CANDIDATE_ALIAS, [AliasTarget(version=worse)], updated_by="t")
    code, output = loradock("promote", "tickets", "--margin", "0.1")
    assert code == 1 and "refused" in output and "original_test" in output and "prod unchanged" in output, output
    assert _prod(hub) == [2]
    code, output = loradock("rollback", "tickets")
    assert code == 0 and "tickets:prod is back on v1" in output, output
    assert _prod(hub) == [1]


def test_shadow_period_compares_live_and_candidate_answers_before_promotion(hub: Hub, tmp_path: Path) -> None:
    registry = hub.registry
    _version(hub, tmp_path, 1)
    registry.set_alias("tickets", DEFAULT_ALIAS, [AliasTarget(version=1)], updated_by="t")
    candidate = _version(hub, tmp_path, 2, _comparison("tickets@1", prod=0.5, candidate=0.9))
    registry.set_alias("tickets", CANDIDATE_ALIAS, [AliasTarget(version=candidate)], updated_by="t")
    assert promote(hub, "tickets", margin=0, shadow_min_requests=2).outcome == "shadow_started"
    assert SHADOW_ALIAS in {alias.name for alias in registry.get_adapter("tickets").aliases}
    hub.interactions.write([record("live-1", "q1", "same"), record("live-2", "q2", "wrong")], None)
    hub.feedback.record(
        FeedbackInput(completion_id="live-2", rating="down", correction="fixed"), tenant=None, created_by="t"
    )
    hub.interactions.write([record("shadow-1", "q1", "same", version=2, shadow_of="live-1")], None)
    waiting = promote(hub, "tickets", margin=0, shadow_min_requests=2)
    assert waiting.outcome == "shadow_waiting" and _prod(hub) == [1]
    hub.interactions.write([record("shadow-2", "q2", "fixed", version=2, shadow_of="live-2")], None)
    with pytest.raises(NotFoundError):  # shadow answers are never shown, so they cannot be rated
        hub.feedback.record(FeedbackInput(completion_id="shadow-2", rating="up"), tenant=None, created_by="t")
    done = promote(hub, "tickets", margin=0, shadow_min_requests=2)
    assert done.outcome == "promoted" and _prod(hub) == [2]
    assert done.shadow is not None and (done.shadow.compared, done.shadow.agreement, done.shadow.fixes) == (2, 0.5, 1)
    assert SHADOW_ALIAS not in {alias.name for alias in registry.get_adapter("tickets").aliases}


def test_a_deletion_request_names_the_versions_that_learned_from_it(hub: Hub, tmp_path: Path) -> None:
    hub.interactions.write([record("c1", "q", "a"), record("c2", "q2", "a2")], None)
    feedback, _ = hub.feedback.record(FeedbackInput(completion_id="c1", rating="up"), tenant=None, created_by="t")
    _version(hub, tmp_path, 1, {LEARNED_FROM: {"interactions": ["c1"], "feedback": [feedback.id]}})
    _version(hub, tmp_path, 2, {LEARNED_FROM: {"interactions": ["c2"], "feedback": []}})
    deleted, versions = hub.interactions.forget("c1")
    assert deleted == [feedback.id] and versions == ["tickets@1"]
    with pytest.raises(NotFoundError):
        hub.interactions.get("c1")
    with pytest.raises(NotFoundError):
        hub.interactions.forget("c1")


def _prod(hub: Hub) -> list[int]:
    aliases = {alias.name: alias for alias in hub.registry.get_adapter("tickets").aliases}
    return [target.version for target in aliases[DEFAULT_ALIAS].targets]
