"""The drift tests of one window against a version's reference profile, each with a score, thresholds and a status.

Prompts: length (PSI), token distribution (Jensen-Shannon distance), meaning (MMD of sentence embeddings,
permutation test). Answers: length (PSI), the share cut off at max_tokens, the share empty or refused. Feedback:
the share of negative ratings among the latest against those before them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from adapters.drift.features import Features
from adapters.drift.profile import DriftProfile
from adapters.drift.reports import CheckResult, DriftedExample, Thresholds
from adapters.drift.statistics import (
    js_distance,
    js_null,
    mmd_permutation,
    p_value,
    psi,
    psi_null,
    quantile_edges,
    rate_thresholds,
    smoothed_rate,
    thresholds_from_null,
)

MIN_WINDOW = 20
MAX_WINDOW_EMBEDDINGS = 200
MIN_FEEDBACK, MIN_FEEDBACK_BASELINE = 10, 20
PSI_FLOORS = Thresholds(0.1, 0.25)
"""The industry's usual PSI levels, kept as floors under the resampled thresholds."""
RATE_INCREASE = 0.05
FEEDBACK_INCREASE = 0.1
EXAMPLES = 5


@dataclass
class Observation:
    """One live completion, as a window holds it."""

    created: float
    features: Features
    answer_length: int
    finish_reason: str | None
    empty: bool
    refused: bool
    text: str | None
    """The (redacted) prompt, kept to show as an example; None when the caller opted out of logging."""


class DriftDetector:
    """A profile with what its tests need precomputed, and the null thresholds cached by window size."""

    def __init__(self, profile: DriftProfile, seed: int = 0) -> None:
        self.profile = profile
        self._rng = np.random.default_rng(seed)
        self._length_edges = quantile_edges(profile.lengths.astype(float))
        self._answer_edges = quantile_edges(profile.answer_lengths.astype(float)) if profile.answers else None
        columns = profile.vocabulary.size + 1
        counts = np.diff(profile.token_offsets)
        rows = np.repeat(np.arange(profile.prompts), counts)
        self._token_rows = sparse.csr_matrix(
            (np.ones(rows.size), (rows, profile.token_columns)), shape=(profile.prompts, columns)
        )
        self._token_total = np.asarray(self._token_rows.sum(axis=0)).ravel()
        self._nulls: dict[tuple[str, int], np.ndarray] = {}

    def check(self, window: Sequence[Observation]) -> tuple[list[CheckResult], list[DriftedExample]]:
        n = len(window)
        results = [self._length(window), self._tokens(window)]
        embedding, examples = self._embedding(window)
        results.append(embedding)
        if self._answer_edges is None or n < MIN_WINDOW:
            results += [
                CheckResult.insufficient("answer_length", "answers", "PSI", n),
                CheckResult.insufficient("answers_truncated", "answers", "binomial", n),
                CheckResult.insufficient("answers_empty_or_refused", "answers", "binomial", n),
            ]
        else:
            results += self._answers(window, self._answer_edges)
        return results, examples

    def _null(self, test: str, size: int, draw: Callable[[int], np.ndarray]) -> np.ndarray:
        key = (test, _bucket(size))
        if key not in self._nulls:
            self._nulls[key] = draw(key[1])
        return self._nulls[key]

    def _length(self, window: Sequence[Observation]) -> CheckResult:
        if len(window) < MIN_WINDOW:
            return CheckResult.insufficient("prompt_length", "prompts", "PSI", len(window))
        lengths = np.array([item.features.length for item in window], dtype=float)
        reference = self.profile.lengths.astype(float)
        null = self._null(
            "prompt_length", len(window), lambda size: psi_null(reference, self._length_edges, size, self._rng)
        )
        score = psi(reference, lengths, self._length_edges)
        limits = thresholds_from_null(null, PSI_FLOORS.warn, PSI_FLOORS.alert)
        return CheckResult.scored("prompt_length", "prompts", "PSI", len(window), score, limits, p_value(null, score))

    def _tokens(self, window: Sequence[Observation]) -> CheckResult:
        method = "Jensen-Shannon distance"
        if len(window) < MIN_WINDOW:
            return CheckResult.insufficient("prompt_tokens", "prompts", method, len(window))
        columns = self.profile.columns(np.concatenate([item.features.tokens for item in window]))
        counts = np.bincount(columns, minlength=self._token_total.size).astype(float)
        null = self._null("prompt_tokens", len(window), lambda size: js_null(self._token_rows, size, self._rng))
        score = js_distance(self._token_total, counts)
        limits = thresholds_from_null(null)
        return CheckResult.scored("prompt_tokens", "prompts", method, len(window), score, limits, p_value(null, score))

    def _embedding(self, window: Sequence[Observation]) -> tuple[CheckResult, list[DriftedExample]]:
        method = "MMD, permutation test"
        embedded = [item for item in window if item.features.embedding is not None][-MAX_WINDOW_EMBEDDINGS:]
        if len(embedded) < MIN_WINDOW:
            return CheckResult.insufficient("prompt_embedding", "prompts", method, len(embedded)), []
        vectors = np.stack([item.features.embedding for item in embedded])  # type: ignore[misc]
        test = mmd_permutation(self.profile.embeddings, vectors, self._rng)
        limits = thresholds_from_null(test.null)
        result = CheckResult.scored(
            "prompt_embedding", "prompts", method, len(embedded), test.mmd2, limits, p_value(test.null, test.mmd2)
        )
        order = np.argsort(test.window_similarity)
        examples = [
            DriftedExample(prompt=embedded[i].text or "", similarity=round(float(test.window_similarity[i]), 4))
            for i in order
            if embedded[i].text is not None
        ][:EXAMPLES]
        return result, examples

    def _answers(self, window: Sequence[Observation], edges: np.ndarray) -> list[CheckResult]:
        n = len(window)
        reference = self.profile.answer_lengths.astype(float)
        lengths = np.array([item.answer_length for item in window], dtype=float)
        null = self._null("answer_length", n, lambda size: psi_null(reference, edges, size, self._rng))
        score = psi(reference, lengths, edges)
        limits = thresholds_from_null(null, PSI_FLOORS.warn, PSI_FLOORS.alert)
        results = [CheckResult.scored("answer_length", "answers", "PSI", n, score, limits, p_value(null, score))]
        profile = self.profile
        for test, hits, reference_hits in (
            ("answers_truncated", sum(item.finish_reason == "length" for item in window), profile.answers_truncated),
            (
                "answers_empty_or_refused",
                sum(item.empty or item.refused for item in window),
                profile.answers_empty + profile.answers_refused,
            ),
        ):
            expected = smoothed_rate(reference_hits, profile.answers)
            results.append(
                CheckResult.scored(
                    test, "answers", "binomial", n, hits / n, rate_thresholds(expected, n, RATE_INCREASE), None
                )
            )
        return results


def feedback_check(recent: Sequence[bool], earlier: Sequence[bool]) -> CheckResult:
    """Whether the latest ratings are negative (True) more often than the ones before them."""
    method = "binomial, against earlier feedback"
    if len(recent) < MIN_FEEDBACK or len(earlier) < MIN_FEEDBACK_BASELINE:
        return CheckResult.insufficient("feedback_negative", "feedback", method, len(recent))
    expected = smoothed_rate(sum(earlier), len(earlier))
    limits = rate_thresholds(expected, len(recent), FEEDBACK_INCREASE)
    return CheckResult.scored(
        "feedback_negative", "feedback", method, len(recent), sum(recent) / len(recent), limits, None
    )


def _bucket(size: int) -> int:
    """`size` rounded down to a grid about 10 % apart, so that close window sizes share their null draws (a
    smaller size gives a wider null: the thresholds only err on the quiet side)."""
    grid = MIN_WINDOW
    while int(grid * 1.1) + 1 <= size:
        grid = int(grid * 1.1) + 1
    return grid
