"""Seeded, class-stratified draws of indices: the train/validation/test split and fixed-size samples.

Pure index arithmetic on a label array (no images): every class gets its share of a draw by the
largest-remainder rule, ties broken at random, and keeps at least one training item.
"""
from __future__ import annotations

import numpy as np

from engine.data.errors import DataError


def quotas(counts: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Share `total` among classes in proportion to counts (largest remainder, ties at random)."""
    exact = counts * total / counts.sum()
    q = np.floor(exact).astype(np.int64)
    order = np.lexsort((rng.random(len(counts)), -(exact - q)))
    q[order[: total - q.sum()]] += 1
    return q


def check_fractions(test_fraction: float, validation_fraction: float) -> None:
    if not (0 <= test_fraction < 1 and 0 <= validation_fraction < 1 and test_fraction + validation_fraction < 1):
        raise DataError(f"test_fraction={test_fraction}, validation_fraction={validation_fraction}: expected "
                        "each in [0, 1) with a sum below 1, so something is left to train on")


def stratified_split(labels, test_fraction: float = 0.2, validation_fraction: float = 0.0,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) sorted int64 index arrays; every class keeps >= 1 training item."""
    check_fractions(test_fraction, validation_fraction)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    _, inv = np.unique(labels, return_inverse=True)
    counts, n = np.bincount(inv), len(labels)
    q_test = np.minimum(quotas(counts, round(n * test_fraction), rng), counts - 1)
    q_val = np.minimum(quotas(counts, round(n * validation_fraction), rng), counts - 1 - q_test)
    parts: tuple[list, list, list] = ([np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0, np.int64)])
    for c in range(len(counts)):
        m = rng.permutation(np.flatnonzero(inv == c))
        t, v = q_test[c], q_test[c] + q_val[c]
        parts[0].append(m[v:]), parts[1].append(m[t:v]), parts[2].append(m[:t])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)  # type: ignore[return-value]


def stratified_sample(labels, n: int, seed: int = 0) -> np.ndarray:
    """n sorted int64 indices drawn at random, class proportions kept (n < len(labels))."""
    rng = np.random.default_rng(seed)
    _, inv = np.unique(labels, return_inverse=True)
    q = quotas(np.bincount(inv), n, rng)
    idx = np.concatenate([rng.permutation(np.flatnonzero(inv == c))[: q[c]] for c in range(len(q))])
    return np.sort(idx)
