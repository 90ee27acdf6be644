"""amax (the clip value) from |x| histograms: TensorRT's EntropyCalibration2 (KL), max, percentile.

The KL search, for a histogram h of B bins (B = 2048) and L = 128 quantization levels:

for each cut i in L..B:
    P    = h[0:i], with the tail sum(h[i:]) folded into P[i-1]
    Q    = h[0:i] cut into L levels of m = i // L bins (the last level also takes the i - L*m
           remaining bins); each level's mass sum(h[level]) is spread evenly over the bins of the
           level where P != 0; bins where P == 0 stay 0
    KL_i = sum_{P_n > 0} p_n log(p_n / q_n),  p = P / sum(P), q = Q / sum(Q)
choose i* = argmin KL_i (first on ties); amax = min((i* + 0.5) * bin_width, max|x|).

Before the search, bin 0 is replaced by bin 1 (as NVIDIA's pytorch-quantization does in
_compute_amax_entropy): post-ReLU tensors put a large share of their values at exactly 0, and that
spike, smeared over a whole level by Q, would otherwise drive the search to a tiny amax
(measured: a ReLU'd Gaussian gets amax = 1.5 sigma with the spike, 4.7 sigma without it).

This is the MXNet / ONNX Runtime re-derivation of NVIDIA's algorithm without their epsilon
smoothing: when P > 0 where Q == 0 (only possible in the last level, when the tail lands in a level
whose own bins are empty) KL_i is +inf instead of a large finite number; otherwise the smoothing
only shifts KL by O(1e-4 / count).

Vectorized over i with cumulative sums: inside level j, q is the constant c_j = M_j / NZ_j, so
sum P log Q = sum_j (sum of P in level j) * log c_j and sum P log P comes from a cumulative
sum of h log h. One histogram costs O(B * L) instead of O(B^2).
"""
from __future__ import annotations

import numpy as np

from calibration.histogram import TensorHistogram

METHODS = ("entropy", "max", "percentile")
NUM_QUANTIZED_BINS = 128
DEFAULT_PERCENTILE = 99.99


def _xlogx(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.zeros_like(x)
    pos = x > 0
    out[pos] = x[pos] * np.log(x[pos])
    return out


def kl_divergences(counts: np.ndarray, num_quantized_bins: int = NUM_QUANTIZED_BINS):
    """KL_i for every cut i in num_quantized_bins..len(counts), on counts as given (the caller
    replaces bin 0, see entropy_amax).

    counts: (B,) non-negative counts. Returns (cuts (n,) int64, kl (n,) float64; +inf where
    undefined: no mass below the cut, or P > 0 where Q == 0).
    """
    h = np.asarray(counts, dtype=np.float64)
    nb, nq = h.size, num_quantized_bins
    if nb < nq:
        raise ValueError(f"histogram has {nb} bins, fewer than num_quantized_bins={nq}")
    c0 = np.concatenate([[0.0], np.cumsum(h)])
    c1 = np.concatenate([[0.0], np.cumsum(_xlogx(h))])
    nz = np.concatenate([[0], np.cumsum(h > 0)])
    total = c0[-1]

    cuts = np.arange(nq, nb + 1, dtype=np.int64)
    m = cuts // nq
    starts = np.arange(nq, dtype=np.int64)[None, :] * m[:, None]  # (n, L)
    stops = starts + m[:, None]
    stops[:, -1] = cuts

    level_mass = c0[stops] - c0[starts]  # sum of h (without the tail) per level
    tail = total - c0[cuts]
    p_last = h[cuts - 1] + tail
    p_mass = level_mass.copy()
    p_mass[:, -1] += tail
    nonzero = (nz[stops] - nz[starts]).astype(np.float64)
    # bin i-1 holds P = h[i-1] + tail: count it as non-empty from P, not from h
    nonzero[:, -1] += (p_last > 0).astype(np.float64) - (h[cuts - 1] > 0).astype(np.float64)

    with np.errstate(divide="ignore", invalid="ignore"):
        log_c = np.log(level_mass / nonzero)
        p_log_q = np.where(p_mass > 0, p_mass * log_c, 0.0)
        bad = np.any((p_mass > 0) & (level_mass <= 0), axis=1)
        p_log_p = c1[cuts - 1] + _xlogx(p_last)
        s_q = c0[cuts]
        kl = (p_log_p - p_log_q.sum(axis=1)) / total - np.log(total) + np.log(s_q)
    kl = np.where(bad | (s_q <= 0) | ~np.isfinite(kl), np.inf, kl)
    # KL is >= 0; float cancellation can leave -1e-16 or so
    return cuts, np.maximum(kl, 0.0)


def entropy_amax(hist: TensorHistogram, num_quantized_bins: int = NUM_QUANTIZED_BINS) -> float:
    """EntropyCalibration2 amax of one histogram (0.0 for an all-zero tensor)."""
    if hist.hist_range is None or hist.max_abs == 0.0:
        return 0.0
    counts = hist.counts.copy()
    counts[0] = counts[1]  # drop the spike of exact zeros (ReLU), like pytorch-quantization
    cuts, kl = kl_divergences(counts, num_quantized_bins)
    if not np.isfinite(kl).any():
        return float(hist.max_abs)
    best = int(cuts[int(np.argmin(kl))])
    # cuts past the max bin all give the same KL up to rounding noise: never go beyond max|x|
    return min((best + 0.5) * hist.bin_width, hist.max_abs)


def percentile_amax(hist: TensorHistogram, percentile: float = DEFAULT_PERCENTILE) -> float:
    """Upper edge of the first bin where the CDF of |x| reaches percentile, capped at max|x|."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (0, 100], got {percentile}")
    if hist.hist_range is None or hist.max_abs == 0.0:
        return 0.0
    cdf = np.cumsum(hist.counts, dtype=np.float64)
    k = int(np.searchsorted(cdf, cdf[-1] * percentile / 100.0))
    return min((k + 1) * hist.bin_width, hist.max_abs)


def compute_amax(hist: TensorHistogram, method: str = "entropy",
                 percentile: float = DEFAULT_PERCENTILE,
                 num_quantized_bins: int = NUM_QUANTIZED_BINS) -> float:
    """amax (>= 0, in the tensor's units) of one histogram by `method` (one of METHODS)."""
    check_method(method)
    if method == "max":
        return float(hist.max_abs)
    if method == "percentile":
        return percentile_amax(hist, percentile)
    return entropy_amax(hist, num_quantized_bins)


# Refinement (calibration.refine) chooses each tensor's amax from the three methods, with the
# percentile at three depths (the best clip point differs from layer to layer).
CANDIDATE_PERCENTILES = (99.9, 99.99, 99.999)


def candidate_amax(hists: dict[str, TensorHistogram],
                   percentile: float = DEFAULT_PERCENTILE) -> dict[str, dict[str, float]]:
    """Per tensor: {"entropy": a, "max": a, "percentile99.9": a, ...} (every method's amax)."""
    pcts = sorted(set(CANDIDATE_PERCENTILES) | {percentile})
    out = {}
    for name, h in hists.items():
        c = {"entropy": entropy_amax(h), "max": float(h.max_abs)}
        c.update({f"percentile{p:g}": percentile_amax(h, p) for p in pcts})
        out[name] = c
    return out


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; valid methods: {', '.join(METHODS)}")
