"""Drift's pure logic: the statistics and their resampled thresholds, profiles, sample files, feedback trend,
and the store on both databases. The real embedding model is exercised by the calibration and server tests."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from adapters.drift.checks import DriftDetector, Observation, feedback_check
from adapters.drift.features import Embedder, is_refusal, prompt_text
from adapters.drift.profile import DriftProfile, ReferenceAnswer, build_profile, read_sample_file
from adapters.drift.reports import CheckResult, Status, WindowReport, worst
from adapters.drift.statistics import (
    js_distance,
    mmd_permutation,
    p_value,
    psi,
    psi_null,
    quantile_edges,
    rate_thresholds,
    thresholds_from_null,
)
from adapters.drift.store import SnapshotView
from adapters.errors import InvalidInputError
from adapters.hub import Hub
from adapters.settings import Settings
from adapters.sources import stage_source
from tests.adapter_factory import write_adapter
from tests.adapters.synthetic import synthetic_base


class HashingEmbedder(Embedder):
    """Words as token ids and a bag-of-words embedding: deterministic features for pure-logic tests."""

    name = "hashing"

    def tokens(self, texts: list[str]) -> list[np.ndarray]:
        return [np.array([_word_id(word) for word in text.split()], dtype=np.int32) for text in texts]

    def embed(self, texts: list[str]) -> np.ndarray:
        vectors = np.zeros((len(texts), 32), np.float32)
        for row, text in enumerate(texts):
            for word in text.split():
                vectors[row, _word_id(word) % 32] += 1
        return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)


def _word_id(word: str) -> int:
    return int(hashlib.sha256(word.lower().encode()).hexdigest()[:6], 16)


WORDS = "invoice charged twice refund order parcel late password reset login crash export report".split()  # noqa: SIM905


def prompts_from(words: list[str], count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=rng.integers(4, 12))) for _ in range(count)]


def observations(embedder: Embedder, texts: list[str], answer_length: int = 3) -> list[Observation]:
    features = embedder.features(texts)
    return [Observation(0.0, f, answer_length, "stop", False, False, t) for f, t in zip(features, texts, strict=True)]


@pytest.fixture(scope="module")
def profile() -> DriftProfile:
    prompts = prompts_from(WORDS, 400, seed=0)
    answers = [ReferenceAnswer("billing urgent ok") for _ in prompts]
    return build_profile(prompts, answers, HashingEmbedder(), "training-data")


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(20, 5, 2000)
    edges = quantile_edges(reference)
    assert psi(reference, rng.normal(20, 5, 2000), edges) < 0.02
    assert psi(reference, rng.normal(40, 5, 200), edges) > 1
    null = psi_null(reference, edges, 50, rng)
    limits = thresholds_from_null(null, 0.1, 0.25)
    assert 0.1 <= limits.warn <= limits.alert
    assert p_value(null, 10.0) == pytest.approx(1 / (null.size + 1))


def test_js_distance_reads_zero_for_equal_and_one_for_disjoint_distributions() -> None:
    assert js_distance(np.array([3.0, 1.0, 0.0]), np.array([6.0, 2.0, 0.0])) == pytest.approx(0, abs=1e-6)
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(1)


def test_mmd_permutation_separates_shifted_clouds_and_not_equal_ones() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(0, 1, (150, 8))
    same = mmd_permutation(reference, rng.normal(0, 1, (60, 8)), rng)
    moved = mmd_permutation(reference, rng.normal(1.5, 1, (60, 8)), rng)
    assert p_value(same.null, same.mmd2) > 0.01
    assert p_value(moved.null, moved.mmd2) <= 1 / (moved.null.size + 1) + 1e-12


def test_rate_thresholds_grow_with_the_expected_rate_and_keep_a_minimum_increase() -> None:
    low, high = rate_thresholds(0.01, 100, 0.05), rate_thresholds(0.2, 100, 0.05)
    assert 0.06 <= low.warn <= low.alert and high.warn > low.warn


def test_profile_round_trips_through_bytes(profile: DriftProfile) -> None:
    again = DriftProfile.from_bytes(profile.to_bytes())
    assert again.prompts == profile.prompts == 400 and again.source == "training-data"
    assert np.array_equal(again.lengths, profile.lengths)
    assert np.array_equal(again.token_columns, profile.token_columns)
    assert again.embeddings.shape == profile.embeddings.shape == (256, 32)
    assert again.answers == 400 and again.answers_refused == 0
    assert np.allclose(again.embeddings, profile.embeddings, atol=1e-3)


def test_build_profile_refuses_too_few_prompts() -> None:
    with pytest.raises(InvalidInputError, match="at least 20 non-empty prompts, got 2"):
        build_profile(["a b", "  ", "c"], [], HashingEmbedder(), "sample-file")


def test_detector_is_ok_in_distribution_and_alerts_on_new_words_longer_prompts_and_refusals(
    profile: DriftProfile,
) -> None:
    embedder = HashingEmbedder()
    detector = DriftDetector(profile)
    same, _ = detector.check(observations(embedder, prompts_from(WORDS, 100, seed=1)))
    assert worst([check.status for check in same]) == Status.OK, same

    other = ["recipe", "oven", "flour", "butter", "bake", "minutes", "sugar", "whisk", "dough", "salt"]
    shifted, examples = detector.check(observations(embedder, prompts_from(other, 100, seed=2)))
    by_test = {check.test: check for check in shifted}
    assert by_test["prompt_tokens"].status == by_test["prompt_embedding"].status == Status.ALERT
    assert examples and all(word in other for word in examples[0].prompt.split())

    longer = [" ".join([text] * 5) for text in prompts_from(WORDS, 100, seed=3)]
    assert {c.test: c for c in detector.check(observations(embedder, longer))[0]}["prompt_length"].status == (
        Status.ALERT
    )

    refusing = observations(embedder, prompts_from(WORDS, 100, seed=4))
    for item in refusing[:30]:
        item.refused = True
    checks = {c.test: c for c in detector.check(refusing)[0]}
    assert checks["answers_empty_or_refused"].status == Status.ALERT and checks["answers_empty_or_refused"].score == 0.3

    small, _ = detector.check(observations(embedder, prompts_from(WORDS, 5, seed=5)))
    assert {check.status for check in small} == {Status.INSUFFICIENT}


def test_feedback_check_needs_enough_ratings_and_alerts_on_a_jump_in_negatives() -> None:
    assert feedback_check([True] * 5, [False] * 100).status == Status.INSUFFICIENT
    assert feedback_check([False] * 45 + [True] * 5, [False] * 90 + [True] * 10).status == Status.OK
    jump = feedback_check([True] * 30 + [False] * 20, [False] * 90 + [True] * 10)
    assert jump.status == Status.ALERT and jump.score == 0.6


def test_prompt_text_and_refusals() -> None:
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]}
    assert prompt_text(chat) == "Hi"
    assert prompt_text({"prompt": ["a", "b"]}) == "a\nb"
    assert is_refusal("I'm sorry, but I can't help with that.") and not is_refusal('{"category": "bug"}')


def test_sample_files_are_read_or_refused_with_the_line(tmp_path: Path) -> None:
    chat = tmp_path / "sample.jsonl"
    chat.write_text(
        '{"messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}]}\n\n'
        '{"prompt": "q2", "completion": "a2"}\n'
    )
    prompts, answers = read_sample_file(chat)
    assert prompts == ["q1", "q2"] and [a.text for a in answers] == ["a1", "a2"]
    text = tmp_path / "sample.txt"
    text.write_text("one\n\ntwo\n")
    assert read_sample_file(text) == (["one", "two"], [])
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "q"}\n{"prompt": \n')
    with pytest.raises(InvalidInputError, match=r"broken.jsonl:2: not valid JSON"):
        read_sample_file(broken)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text('{"text": "q"}\n')
    with pytest.raises(InvalidInputError, match=r"wrong.jsonl:1: expected an object with 'messages' or 'prompt'"):
        read_sample_file(wrong)
    with pytest.raises(InvalidInputError, match="no such file"):
        read_sample_file(tmp_path / "missing.txt")


def test_store_keeps_profiles_and_snapshots(database_url: str, tmp_path: Path, profile: DriftProfile) -> None:
    hub = Hub.open(Settings(home=tmp_path / "home", database_url=database_url, max_lora_rank=16))
    try:
        base = synthetic_base()
        staged = stage_source(hub.store, str(write_adapter(tmp_path / "adapter", base, seed=1)), hub.registry.limits)
        version = hub.registry.register("watched", staged, base, created_by="test")
        store = hub.drift
        assert store.load_profile(version.lora_id) is None and store.profile_created(version.lora_id) is None
        assert store.save_profile(version.lora_id, profile, created_by="test")
        assert not store.save_profile(version.lora_id, profile, created_by="again")
        assert store.load_profile(version.lora_id).prompts == 400  # type: ignore[union-attr]
        assert store.profiles({version.lora_id})[version.lora_id].source == "training-data"
        assert store.save_profile(version.lora_id, profile, created_by="replaced", replace=True)
        assert store.profiles({version.lora_id})[version.lora_id].created_by == "replaced"

        def snapshot(at: datetime, window: str, status: Status) -> SnapshotView:
            check = CheckResult(test="prompt_length", target="prompts", method="PSI", n=50, status=status, score=0.3)
            report = WindowReport(
                window=window, size="50", n=50, start=None, end=None, status=status, checks=[check], examples=[]
            )
            return SnapshotView(created_at=at, adapter="watched", version=1, replica="r1", report=report)

        now = datetime.now(UTC)
        store.add_snapshots(
            [
                snapshot(now - timedelta(days=40), "count", Status.OK),
                snapshot(now - timedelta(minutes=2), "count", Status.WARN),
                snapshot(now - timedelta(minutes=1), "count", Status.ALERT),
                snapshot(now - timedelta(minutes=1), "time", Status.OK),
            ]
        )
        latest = {view.report.window: view.report.status for view in store.latest("watched")}
        assert latest == {"count": Status.ALERT, "time": Status.OK}
        recent = store.history("watched", since=now - timedelta(hours=1))
        assert [view.report.status for view in recent] == [Status.WARN, Status.ALERT, Status.OK]
        assert store.prune(now - timedelta(days=30)) == 1
        assert len(store.history("watched")) == 3
    finally:
        hub.close()
