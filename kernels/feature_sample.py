"""Row samples for fitting encoders in one streaming pass, with a stated error.

A FeatureSample keeps every row while they fit (then quantiles are exact), else a uniform reservoir
sample; `rank_error` is the Dvoretzky-Kiefer-Wolfowitz bound: with 95 % confidence every quantile
of the sample is within that many ranks (a fraction of all rows) of the exact one. When the rows
come from images and thresholds are needed before the first bits, `sample_first_order` puts a
seeded uniform sample first and `fit_on_first_rows` fits on it, then lets the stream go on.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

SAMPLE_ROWS = 4096  # rows a FeatureSample keeps (fewer for very wide features, see sample_capacity)
SAMPLE_BYTES = 512 << 20
DKW_CONFIDENCE = 0.95



def sample_capacity(n_features: int, rows: int = SAMPLE_ROWS, max_bytes: int = SAMPLE_BYTES) -> int:
    """Rows of float32 a sample keeps: `rows`, fewer when that would pass `max_bytes` (>= 256)."""
    return int(max(256, min(rows, max_bytes // max(4 * n_features, 1))))


def rank_error(sample_rows: int, confidence: float = DKW_CONFIDENCE) -> float:
    """Dvoretzky-Kiefer-Wolfowitz: with this confidence, every quantile of a uniform sample of
    `sample_rows` rows is within this many ranks (as a fraction of all rows) of the exact one."""
    return math.sqrt(math.log(2.0 / (1.0 - confidence)) / (2.0 * max(sample_rows, 1)))


class FeatureSample:
    """A uniform sample of rows seen in one streaming pass (reservoir sampling, algorithm R).

    Holds every row while at most `capacity` have been seen, so the statistics are then exact;
    past it each row is kept with probability capacity/seen. Seeded: the same stream gives the
    same sample.
    """

    def __init__(self, capacity: int = SAMPLE_ROWS, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"FeatureSample capacity must be >= 1, got {capacity}")
        self.capacity, self.seen = int(capacity), 0
        self._rng = np.random.default_rng([seed, 0x5A4D])
        self._rows: np.ndarray | None = None

    @classmethod
    def of(cls, rows) -> "FeatureSample":
        rows = np.asarray(rows, dtype=np.float32)
        s = cls(max(len(rows), 1))
        s.add(rows)
        return s

    def add(self, X) -> None:
        from kernels.xp import to_host

        X = np.asarray(to_host(X), dtype=np.float32)
        if X.ndim != 2:
            raise ValueError(f"FeatureSample.add: expected (n, F) rows, got shape {X.shape}")
        if self._rows is None:
            self._rows = np.empty((self.capacity, X.shape[1]), np.float32)
        elif X.shape[1] != self._rows.shape[1]:
            raise ValueError(f"FeatureSample.add: rows of {X.shape[1]} features after {self._rows.shape[1]}")
        free = max(0, min(self.capacity - self.seen, len(X)))
        self._rows[self.seen:self.seen + free] = X[:free]
        self.seen += free
        rest = X[free:]
        if len(rest):  # algorithm R: row t (0-based) replaces slot j ~ U[0, t] when j < capacity
            t = self.seen + np.arange(len(rest))
            j = (self._rng.random(len(rest)) * (t + 1)).astype(np.int64)
            keep = np.flatnonzero(j < self.capacity)
            for i in keep:  # in order: a later row overwrites an earlier one in the same slot
                self._rows[j[i]] = rest[i]
            self.seen += len(rest)

    def rows(self) -> np.ndarray:
        if self._rows is None:
            return np.zeros((0, 0), np.float32)
        return self._rows[:min(self.seen, self.capacity)]

    @property
    def exact(self) -> bool:
        return self.seen <= self.capacity

    def describe(self) -> dict:
        kept = min(self.seen, self.capacity)
        return {"rows_seen": self.seen, "sample_rows": kept, "exact": self.exact,
                "rank_error": 0.0 if self.exact else round(rank_error(kept), 6),
                "rank_error_confidence": DKW_CONFIDENCE}


def sample_first_order(n: int, capacity: int, seed: int = 0) -> np.ndarray | None:
    """A row order whose first `capacity` rows are a uniform sample of all n (None: n fits, keep
    the order). Lets an encoder be fitted on the first rows of a single pass over the images."""
    if n <= capacity:
        return None
    return np.random.default_rng([seed, 0x0DE5]).permutation(n)


def with_sample_first(dataset, n_features: int | None, seed: int = 0):
    """`dataset` (anything with len() and .select(order)) with a uniform sample of its rows first,
    or unchanged when all of them fit in the sample (n_features None: SAMPLE_ROWS)."""
    capacity = sample_capacity(n_features) if n_features else SAMPLE_ROWS
    order = sample_first_order(len(dataset), capacity, seed)
    return dataset if order is None else dataset.select(order)


def fit_on_first_rows(encoder, batches, capacity: int | None = None):
    """(features, labels) batches -> the same batches, after fitting `encoder` on the first
    `capacity` rows (buffered, then released; None: sample_capacity of the feature width). Put a
    uniform sample first (sample_first_order) for it to be uniform; with <= capacity rows in all
    it is exact."""
    buf, have = [], 0
    it = iter(batches)
    for X, y in it:
        buf.append((X, y))
        have += len(y)
        if capacity is None:
            capacity = sample_capacity(X.shape[1])
        if have >= capacity:
            break
    capacity = capacity or 1
    more = next(it, None)  # is there anything past the sample? (then it is an estimate)
    if more is not None:
        it = itertools.chain([more], it)
    sample = FeatureSample(max(capacity, 1))
    for X, _ in buf:
        sample.add(X)
    if have:
        encoder.fit(sample)
        if more is not None:  # the sample is the first rows of a longer stream: say what it stands for
            encoder.stats_ = dict(encoder.stats_, exact=False, rank_error=round(rank_error(sample.seen), 6))
    yield from buf
    yield from it
