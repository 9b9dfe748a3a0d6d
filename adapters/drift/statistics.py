"""Two-sample drift statistics whose thresholds come from their own null distributions.

The textbook fixed thresholds (PSI 0.1 / 0.25, say) assume large samples: a window of 50 prompts drawn from the
very distribution an adapter was trained on routinely scores a PSI above 0.1 by sampling noise alone. So every
statistic here is compared with what it scores when nothing drifted: bootstrap windows of the same size drawn
from the reference (against a bootstrap copy of the reference, so that the reference's own noise counts too), or,
for the embedding test, permutations of reference and window (the kernel two-sample test of Gretton et al.).
The thresholds are quantiles of that null; a practical floor keeps tiny but significant shifts in big windows quiet.
scipy offers the distances but not these resampled nulls, which are a few vectorised numpy lines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.spatial.distance import jensenshannon
from scipy.stats import binom

from adapters.drift.reports import Thresholds

DRAWS = 2000
"""Null draws per test: enough to resolve the alert level (one in 2000) below the warn level (one in 500)."""
WARN_LEVEL = 0.002
ALERT_LEVEL = 0.0005


def thresholds_from_null(null: np.ndarray, warn_floor: float = 0.0, alert_floor: float = 0.0) -> Thresholds:
    """Scores that `null` exceeds with probability WARN_LEVEL / ALERT_LEVEL, or the floors if higher."""
    warn = float(np.quantile(null, 1 - WARN_LEVEL))
    alert = float(np.quantile(null, 1 - ALERT_LEVEL))
    return Thresholds(max(warn, warn_floor), max(alert, alert_floor, warn))


def p_value(null: np.ndarray, score: float) -> float:
    """The share of null draws scoring at least `score` (with the +1 that keeps it from reading zero)."""
    return float((1 + np.count_nonzero(null >= score)) / (1 + null.size))


# --- population stability index on a numeric feature ------------------------------------------------------------


def quantile_edges(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner bin edges at the reference's quantiles (fewer bins when values repeat)."""
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    return edges.astype(float)


def _bin_fractions(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Smoothed bin fractions along the last axis (half a count per bin, so empty bins stay finite in the log)."""
    bins = edges.size + 1
    index = np.searchsorted(edges, values, side="right")
    rows = index.reshape(-1, index.shape[-1])
    offsets = (np.arange(rows.shape[0]) * bins)[:, None]
    counts = np.bincount((rows + offsets).ravel(), minlength=rows.shape[0] * bins).reshape(rows.shape[0], bins)
    fractions = (counts + 0.5) / (rows.shape[1] + 0.5 * bins)
    return fractions if values.ndim > 1 else fractions[0]


def psi(reference: np.ndarray, current: np.ndarray, edges: np.ndarray) -> float:
    expected = _bin_fractions(reference, edges)
    actual = _bin_fractions(current, edges)
    return float(np.sum((actual - expected) * np.log(actual / expected)))


def psi_null(reference: np.ndarray, edges: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    windows = _bin_fractions(rng.choice(reference, size=(DRAWS, size)), edges)
    references = _bin_fractions(rng.choice(reference, size=(DRAWS, reference.size)), edges)
    return np.asarray(np.sum((windows - references) * np.log(windows / references), axis=1))


# --- Jensen-Shannon distance on token distributions ------------------------------------------------------------


def js_distance(reference_counts: np.ndarray, current_counts: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, 0 = same distribution, 1 = disjoint) of two count vectors."""
    return float(jensenshannon(reference_counts, current_counts, base=2))


def js_null(rows: sparse.csr_matrix, size: int, rng: np.random.Generator) -> np.ndarray:
    """JS distances between bootstrap windows of `size` prompts and bootstrap references (rows: prompt x token)."""
    count = rows.shape[0]
    window_draws = _draw_counts(rng, count, size)
    reference_draws = _draw_counts(rng, count, count)
    windows = np.asarray((rows.T @ window_draws.T).T)
    references = np.asarray((rows.T @ reference_draws.T).T)
    return np.asarray(jensenshannon(references, windows, base=2, axis=1))


def _draw_counts(rng: np.random.Generator, population: int, size: int) -> np.ndarray:
    """How often each of `population` items is drawn in each of DRAWS samples of `size` with replacement."""
    return rng.multinomial(size, np.full(population, 1 / population), size=DRAWS).astype(float)


# --- kernel two-sample test on embeddings -----------------------------------------------------------------------


@dataclass(frozen=True)
class KernelTest:
    mmd2: float
    null: np.ndarray
    window_similarity: np.ndarray
    """For each window item, its highest cosine similarity to a reference item (low: unlike anything trained on)."""


def mmd_permutation(reference: np.ndarray, window: np.ndarray, rng: np.random.Generator) -> KernelTest:
    """Squared maximum mean discrepancy (RBF kernel, median bandwidth) and its permutation null.

    For a label vector a (+1/m on one sample, -1/n on the other) MMD^2 = a K a^T, so all permutations are one
    matrix product over the pooled kernel.
    """
    pooled = np.vstack([reference, window]).astype(np.float64)
    squared = np.maximum(
        np.sum(pooled**2, axis=1)[:, None] + np.sum(pooled**2, axis=1)[None, :] - 2 * pooled @ pooled.T, 0
    )
    bandwidth = float(np.median(squared[np.triu_indices_from(squared, k=1)])) or 1.0
    kernel = np.exp(-squared / bandwidth)
    m, n = len(reference), len(window)
    labels = np.concatenate([np.full(m, 1 / m), np.full(n, -1 / n)])
    observed = float(labels @ kernel @ labels)
    shuffled = np.stack([rng.permutation(labels) for _ in range(DRAWS)])
    null = np.sum((shuffled @ kernel) * shuffled, axis=1)
    similarity = (window @ reference.T).max(axis=1)
    return KernelTest(observed, null, similarity)


# --- rates (empty, refused, cut-off answers; negative feedback) -------------------------------------------------


def rate_thresholds(expected: float, size: int, min_increase: float) -> Thresholds:
    """The observed rates at which a binomial test against `expected` passes the warn / alert levels."""
    warn = (binom.isf(WARN_LEVEL, size, expected) + 1) / size
    alert = (binom.isf(ALERT_LEVEL, size, expected) + 1) / size
    return Thresholds(max(warn, expected + min_increase), max(alert, expected + 2 * min_increase))


def smoothed_rate(hits: int, total: int) -> float:
    """A reference rate that never reads zero from a finite sample (Laplace's rule of succession)."""
    return (hits + 1) / (total + 2)
