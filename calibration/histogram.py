"""Histograms of |x| whose range grows by powers of two, so that merging never loses counts.

Binning rule (exact, documented because tests rely on it):

* A histogram has ``num_bins`` bins (2048) over ``[0, R)``; ``R`` is always a power of two and
  strictly greater than every |x| seen: ``R = 2 ** (floor(log2(max|x|)) + 1)``.
* A value goes to bin ``floor(|x| * (num_bins / R))``. ``num_bins / R`` is a power of two, so the
  product is exact in float32 and the bin of a value depends only on the final R.
* When a batch brings a larger max|x|, R doubles (once or more) and each doubling sums adjacent
  pairs of bins (``c[2k] + c[2k+1]`` -> new bin k) and zero-fills the upper half. Since
  ``floor(floor(2^a * y) / 2) == floor(2^(a-1) * y)``, the merged counts equal a one-shot histogram
  of all values with the final R: histogramming batch by batch is exactly histogramming once.
* Before any non-zero value arrives R is unset and every value counts in bin 0 (which holds 0 for
  every R).

Works on torch tensors on any device (bincount on the device; the small count vector is moved to
the CPU), and on NumPy arrays.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

NUM_BINS = 2048
# Bounds on R keep num_bins / R a finite normal float32 power of two (values below 2**-60 are
# treated as lying in bin 0; they are far below any int8 step).
_MIN_LOG2_RANGE = -60
_MAX_LOG2_RANGE = 100


def range_for(max_abs: float) -> float | None:
    """Smallest power of two strictly greater than max_abs (None when max_abs == 0)."""
    if max_abs <= 0.0:
        return None
    _, exp = math.frexp(max_abs)  # max_abs = m * 2**exp, 0.5 <= m < 1  ->  2**exp > max_abs
    exp = min(max(exp, _MIN_LOG2_RANGE), _MAX_LOG2_RANGE)
    return math.ldexp(1.0, exp)


def bin_counts(abs_values, hist_range: float, num_bins: int = NUM_BINS) -> np.ndarray:
    """Counts of already-absolute values (torch tensor or ndarray, any shape) over [0, hist_range).

    Returns an int64 NumPy array of length num_bins.
    """
    factor = num_bins / hist_range
    if isinstance(abs_values, np.ndarray):
        idx = (abs_values.reshape(-1).astype(np.float32) * np.float32(factor)).astype(np.int64)
        np.minimum(idx, num_bins - 1, out=idx)  # only reachable through the _MAX_LOG2_RANGE clamp
        return np.bincount(idx, minlength=num_bins).astype(np.int64)
    import torch

    idx = (abs_values.reshape(-1).float() * factor).to(torch.int64).clamp_(max=num_bins - 1)
    return torch.bincount(idx, minlength=num_bins).cpu().numpy().astype(np.int64)


@dataclass
class TensorHistogram:
    """Running statistics of one tensor: |x| histogram, min, max|x|, number of values.

    counts: int64 (num_bins,); hist_range: R (None until a non-zero value is seen).
    """

    num_bins: int = NUM_BINS
    counts: np.ndarray = field(default=None)  # type: ignore[assignment]
    hist_range: float | None = None
    min_value: float = math.inf
    max_abs: float = 0.0
    n_values: int = 0
    n_batches: int = 0

    def __post_init__(self):
        if self.counts is None:
            self.counts = np.zeros(self.num_bins, dtype=np.int64)

    @property
    def bin_width(self) -> float:
        return 0.0 if self.hist_range is None else self.hist_range / self.num_bins

    @property
    def nonneg(self) -> bool:
        return self.min_value >= 0.0

    def grow_to(self, new_range: float | None) -> None:
        """Double R until it reaches new_range, merging adjacent bin pairs (no count is lost)."""
        if new_range is None:
            return
        if self.hist_range is None:
            self.hist_range = new_range  # every count so far is a zero, in bin 0 for any R
            return
        while self.hist_range < new_range:
            merged = self.counts[0::2] + self.counts[1::2]
            self.counts = np.concatenate([merged, np.zeros(self.num_bins - merged.size, np.int64)])
            self.hist_range *= 2.0

    def add_abs(self, abs_values, min_value: float, max_abs: float) -> None:
        """Add values whose |x| are given (torch tensor or ndarray); min/max already computed."""
        self.grow_to(range_for(max_abs))
        if self.hist_range is None:
            self.counts[0] += int(abs_values.numel() if hasattr(abs_values, "numel") else abs_values.size)
        else:
            self.counts += bin_counts(abs_values, self.hist_range, self.num_bins)
        self.min_value = min(self.min_value, float(min_value))
        self.max_abs = max(self.max_abs, float(max_abs))
        self.n_values += int(abs_values.numel() if hasattr(abs_values, "numel") else abs_values.size)
        self.n_batches += 1

    def add(self, x) -> None:
        """Add raw values (NumPy array; torch tensors go through calibration.collect)."""
        x = np.asarray(x, dtype=np.float32)
        a = np.abs(x)
        self.add_abs(a, float(x.min()) if x.size else math.inf, float(a.max()) if x.size else 0.0)

    def merge(self, other: "TensorHistogram") -> "TensorHistogram":
        """A new histogram holding the values of both (exact, see the module docstring)."""
        if other.num_bins != self.num_bins:
            raise ValueError(f"cannot merge histograms of {self.num_bins} and {other.num_bins} bins")
        out = TensorHistogram(self.num_bins, self.counts.copy(), self.hist_range, self.min_value,
                              self.max_abs, self.n_values, self.n_batches)
        if other.hist_range is not None:
            out.grow_to(other.hist_range)
            o = TensorHistogram(other.num_bins, other.counts.copy(), other.hist_range)
            o.grow_to(out.hist_range)
            out.counts = out.counts + o.counts
        else:
            out.counts[0] += other.counts.sum()
        out.min_value = min(self.min_value, other.min_value)
        out.max_abs = max(self.max_abs, other.max_abs)
        out.n_values += other.n_values
        out.n_batches += other.n_batches
        return out

    def to_dict(self) -> dict:
        return {"num_bins": self.num_bins, "counts": self.counts.tolist(), "hist_range": self.hist_range,
                "min_value": self.min_value, "max_abs": self.max_abs, "n_values": self.n_values,
                "n_batches": self.n_batches}

    @classmethod
    def from_dict(cls, d: dict) -> "TensorHistogram":
        return cls(d["num_bins"], np.asarray(d["counts"], np.int64), d["hist_range"], d["min_value"],
                   d["max_abs"], d["n_values"], d["n_batches"])
