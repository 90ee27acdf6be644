"""KL search vs a loop re-derivation; histogram merging; max, percentile and the candidates."""
import math

import numpy as np
import pytest

from calibration.entropy import METHODS, candidate_amax, compute_amax, entropy_amax, kl_divergences
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
    h = _hist(x)
    counts = h.counts.copy()
    counts[0] = counts[1]
    cuts, kl = kl_divergences(counts)
    ref = kl_loop(counts)
    assert cuts[0] == 128 and cuts[-1] == NUM_BINS and kl.shape == ref.shape
    fin = np.isfinite(ref)
    np.testing.assert_array_equal(np.isfinite(kl), fin)
    np.testing.assert_allclose(kl[fin], ref[fin], rtol=1e-7, atol=1e-10)
    assert np.argmin(kl) == np.argmin(ref)
    # the amax is the loop's best cut (its bin's middle), capped at max|x|
    assert entropy_amax(h) == min((cuts[np.argmin(ref)] + 0.5) * h.bin_width, h.max_abs)


def test_heavy_tail_amax_stays_in_the_bulk():
    """Measured: a standard Gaussian (max|x| 5.04) gets 4.82; a Laplace(1) bulk (max|x| 15.1,
    99.99th percentile 8.97) gets 10.77 alone and 10.53 with one outlier at 80 (16x coarser bins)."""
    rng = np.random.default_rng(1)
    g = _hist(rng.standard_normal(500_000))
    bulk = rng.laplace(size=500_000)
    lap, lap_alone = _hist(np.concatenate([bulk, [80.0]])), _hist(bulk)
    assert 4.6 < entropy_amax(g) < 5.0 < g.max_abs
    assert 10.0 < entropy_amax(lap) < 11.0 < np.abs(bulk).max()
    # the outlier coarsens the bins (width 1/16 instead of 1/128) but does not move the clip point
    assert abs(entropy_amax(lap) - entropy_amax(lap_alone)) < 0.36


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
    assert compute_amax(h, "max") == pytest.approx(50.0)
    assert 3.0 < compute_amax(h, "percentile", percentile=99.99) < 6.0
    # the candidates refinement chooses from are exactly each method's amax
    c = candidate_amax({"a": h}, percentile=99.95)["a"]
    assert c["entropy"] == compute_amax(h, "entropy") and c["max"] == compute_amax(h, "max")
    assert c["percentile99.95"] == compute_amax(h, "percentile", percentile=99.95)
    assert set(c) == {"entropy", "max", "percentile99.9", "percentile99.95", "percentile99.99", "percentile99.999"}


def test_all_zero_tensor_gives_floor():
    from calibration.scales import MIN_AMAX, act_scale

    h = _hist(np.zeros(1000))
    for m in METHODS:
        assert compute_amax(h, m) == 0.0
    assert act_scale(0.0) == MIN_AMAX / 127 > 0
