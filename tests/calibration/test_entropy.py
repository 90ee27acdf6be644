"""KL search vs a loop re-derivation; histogram merging; max/percentile; bad inputs."""
import math

import numpy as np
import pytest

from calibration.entropy import (METHODS, compute_threshold, compute_thresholds, entropy_threshold,
                                 kl_divergences)
from calibration.histogram import NUM_BINS, TensorHistogram, range_for


def kl_loop(h, nq=128):
    """Straightforward per-cut loop (the definition in calibration/entropy.py's docstring)."""
    h = np.asarray(h, dtype=np.float64)
    out = []
    for i in range(nq, h.size + 1):
        p = h[:i].copy()
        p[i - 1] += h[i:].sum()
        m = i // nq
        q = np.zeros(i)
        for j in range(nq):
            a, b = j * m, ((j + 1) * m if j < nq - 1 else i)
            nz = p[a:b] != 0
            if nz.sum():
                q[a:b][nz] = h[a:b].sum() / nz.sum()
        if q.sum() == 0 or np.any((p > 0) & (q == 0)):
            out.append(math.inf)
            continue
        pn, qn = p / p.sum(), q / q.sum()
        s = pn > 0
        out.append(float(np.sum(pn[s] * np.log(pn[s] / qn[s]))))
    return np.array(out)


def _hist(x):
    h = TensorHistogram()
    h.add(x)
    return h


@pytest.mark.parametrize("kind", ["gauss", "laplace", "outliers", "relu", "sparse"])
def test_kl_vectorized_matches_loop(kind):
    rng = np.random.default_rng(0)
    n = 200_000
    x = {"gauss": rng.standard_normal(n), "laplace": rng.laplace(size=n),
         "outliers": np.concatenate([rng.standard_normal(n), [60.0, -45.0, 30.0]]),
         "relu": np.maximum(rng.standard_normal(n), 0),
         "sparse": rng.standard_normal(300)}[kind]
    counts = _hist(x).counts.copy()
    counts[0] = counts[1]
    cuts, kl = kl_divergences(counts)
    ref = kl_loop(counts)
    assert cuts[0] == 128 and cuts[-1] == NUM_BINS and kl.shape == ref.shape
    fin = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(kl), fin)
    np.testing.assert_allclose(kl[fin], ref[fin], rtol=1e-7, atol=1e-10)
    assert np.argmin(kl) == np.argmin(ref)


def test_heavy_tail_threshold_below_max():
    rng = np.random.default_rng(1)
    g = _hist(rng.standard_normal(500_000))
    lap = _hist(np.concatenate([rng.laplace(size=500_000), [80.0]]))
    assert 3.0 < entropy_threshold(g) <= g.max_abs
    assert entropy_threshold(lap) < 0.5 * lap.max_abs  # one outlier at 80 must not set the range


def test_histogram_merge_equals_one_shot():
    rng = np.random.default_rng(2)
    parts = [rng.standard_normal(1000) * s for s in (0.01, 1.0, 0.3, 37.0, 0.0, 5.0)]
    parts[4] = np.zeros(100)
    running = TensorHistogram()
    for p in parts:
        running.add(p)
    one = _hist(np.concatenate(parts))
    assert running.hist_range == one.hist_range == range_for(np.abs(np.concatenate(parts)).max())
    np.testing.assert_array_equal(running.counts, one.counts)
    a, b = TensorHistogram(), TensorHistogram()
    for p in parts[:3]:
        a.add(p)
    for p in parts[3:]:
        b.add(p)
    np.testing.assert_array_equal(a.merge(b).counts, one.counts)
    np.testing.assert_array_equal(b.merge(a).counts, one.counts)
    assert running.counts.sum() == sum(p.size for p in parts)


def test_max_and_percentile():
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(100_000), [50.0]])
    h = _hist(x)
    assert compute_threshold(h, "max") == pytest.approx(50.0)
    assert 3.0 < compute_threshold(h, "percentile", percentile=99.99) < 6.0
    assert set(compute_thresholds({"a": h}, "max")) == {"a"}


def test_all_zero_tensor_gives_floor():
    from calibration.scales import MIN_THRESHOLD, act_scale

    h = _hist(np.zeros(1000))
    for m in METHODS:
        assert compute_threshold(h, m) == 0.0
    assert act_scale(0.0) == MIN_THRESHOLD / 127 > 0


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ValueError, match="unknown calibration method 'kl'.*entropy, max, percentile"):
        compute_threshold(TensorHistogram(), "kl")


def test_vectorized_search_is_fast():
    import time

    rng = np.random.default_rng(4)
    hists = [_hist(rng.laplace(size=20_000) * (i + 1)) for i in range(100)]
    t = time.perf_counter()
    for h in hists:
        entropy_threshold(h)
    assert time.perf_counter() - t < 5.0  # ~10 ms per tensor; the loop version takes seconds each
