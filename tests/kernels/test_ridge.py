"""kernels/ridge.py and kernels/solvers.py against scikit-learn's RidgeClassifier and against
themselves (stream, shards, forms, solvers). `xp` runs a body on NumPy and CuPy (conftest.py)."""
import sys

import numpy as np
import pytest
from sklearn.linear_model import RidgeClassifier

from kernels.ridge import NormalEquations, one_vs_all_targets, predict_scores
from kernels.solvers import check_alphas, resolve_solver, solve_ridge_path
from kernels.xp import check_finite, to_host


def opu_like(n, k, n_classes=4, seed=0):
    """Non-negative chi-square-like features with class signal, and their labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, n)
    centers = rng.standard_normal((n_classes, k))
    z = centers[y] + rng.standard_normal((n, k)) * 1.5
    z2 = rng.standard_normal((n, k))
    return ((z ** 2 + z2 ** 2) / 2).astype(np.float32), y


def fit_path(Y, y, n_classes, alphas, fit_intercept=True, batch=37, xp=np, **kw):
    ne = NormalEquations(**kw)
    Y, T = xp.asarray(Y), one_vs_all_targets(xp.asarray(y), n_classes)
    for i in range(0, len(Y), batch):
        ne.update(Y[i:i + batch], T[i:i + batch])
    return ne.solve_path(alphas, fit_intercept=fit_intercept)


def test_one_vs_all_targets_matches_label_binarizer(xp):
    from sklearn.preprocessing import LabelBinarizer

    y = np.array([0, 2, 1, 2, 0])
    expect = LabelBinarizer(pos_label=1, neg_label=-1).fit_transform(y)
    np.testing.assert_array_equal(to_host(one_vs_all_targets(xp.asarray(y), 3)), expect)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        one_vs_all_targets(xp.asarray([0, 3]), 3)


@pytest.mark.parametrize("gemm_dtype,rtol", [("float64", 1e-8), ("float32", 1e-4)])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_matches_sklearn_ridge_classifier(fit_intercept, gemm_dtype, rtol, xp):
    # float32 GEMM of centered batches: ~1e-5 relative on the coefficients, same predictions.
    Y, y = opu_like(300, 40)
    alpha = 5.0
    path = fit_path(Y, y, 4, [alpha], fit_intercept, xp=xp, gemm_dtype=gemm_dtype)
    W, b = map(to_host, path[0])
    sk = RidgeClassifier(alpha=alpha, fit_intercept=fit_intercept, solver="cholesky")
    sk.fit(Y.astype(np.float64), y)
    scale = np.abs(sk.coef_).max()
    np.testing.assert_allclose(W.T, sk.coef_, rtol=rtol, atol=rtol * scale)
    np.testing.assert_allclose(b, sk.intercept_ if fit_intercept else 0.0, atol=rtol)
    Yt, _ = opu_like(200, 40, seed=1)
    np.testing.assert_array_equal(predict_scores(Yt, W, b).argmax(1), sk.predict(Yt.astype(np.float64)))


def test_streaming_equals_batch_gram(xp):
    Y, y = opu_like(250, 30)
    T = one_vs_all_targets(y, 4)
    ne = NormalEquations()
    for i in range(0, 250, 64):
        ne.update(xp.asarray(Y[i:i + 64]), xp.asarray(T[i:i + 64]))
    Y64 = Y.astype(np.float64)
    Yc, Tc = Y64 - Y64.mean(0), T - T.mean(0)
    G, B = map(to_host, ne.gram(fit_intercept=True))
    np.testing.assert_allclose(G, Yc.T @ Yc, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(B, Yc.T @ Tc, rtol=1e-5, atol=1e-3)
    G0, B0 = map(to_host, ne.gram(fit_intercept=False))
    np.testing.assert_allclose(G0, Y64.T @ Y64, rtol=1e-6)
    np.testing.assert_allclose(B0, Y64.T @ T, rtol=1e-5, atol=1e-3)


def test_merge_of_shards_equals_one_pass(xp):
    Y, y = opu_like(300, 25)
    Y, T = xp.asarray(Y), one_vs_all_targets(xp.asarray(y), 4)
    one = NormalEquations(gemm_dtype="float64").update(Y, T)
    shards = [NormalEquations(gemm_dtype="float64").update(Y[a:b], T[a:b])
              for a, b in [(0, 90), (90, 91), (91, 300)]]
    merged = NormalEquations(gemm_dtype="float64")
    for s in shards:
        merged.merge(s)
    assert merged.n == 300
    for a, b in zip(one.gram(), merged.gram()):
        np.testing.assert_allclose(to_host(a), to_host(b), rtol=1e-10, atol=1e-8)
    np.testing.assert_allclose(to_host(one.mean_y), to_host(merged.mean_y), rtol=1e-12)


def test_eigh_path_equals_cholesky_per_alpha(xp):
    Y, y = opu_like(200, 30)
    ne = NormalEquations().update(xp.asarray(Y), one_vs_all_targets(xp.asarray(y), 4))
    G, B = ne.gram()
    alphas = [0.1, 1.0, 30.0, 1e4]
    We, used_e = solve_ridge_path(G, B, alphas, solver="eigh")
    Wc, used_c = solve_ridge_path(G, B, alphas, solver="cholesky", mixed=False)
    Wm, used_m = solve_ridge_path(G, B, alphas, solver="cholesky")
    mixed = "cholesky(fp32+refine)" if xp is np else "cholesky"  # the float32 factorization is torch's (host)
    assert (used_e, used_c, used_m) == ("eigh", "cholesky", mixed)
    We, Wc, Wm = to_host(We), to_host(Wc), to_host(Wm)
    np.testing.assert_allclose(We, Wc, rtol=1e-7, atol=1e-12)
    np.testing.assert_allclose(Wm, Wc, rtol=1e-10, atol=1e-14)  # refinement reaches float64
    assert resolve_solver("auto", 100) == "eigh" and resolve_solver("auto", 15) == "cholesky"


def test_scipy_cholesky_without_torch(monkeypatch):
    Y, y = opu_like(100, 12)
    G, B = NormalEquations().update(Y, one_vs_all_targets(y, 4)).gram()
    W_torch, _ = solve_ridge_path(G, B, [3.0], solver="cholesky")
    monkeypatch.setitem(sys.modules, "torch", None)
    W_scipy, used = solve_ridge_path(G, B, [3.0], solver="cholesky")
    assert used == "cholesky"
    np.testing.assert_allclose(W_scipy, W_torch, rtol=1e-10)
    with pytest.raises(ValueError, match="unknown solver 'svd'"):
        solve_ridge_path(G, B, [3.0], solver="svd")


def test_dual_equals_primal(xp):
    Y, y = opu_like(40, 120)  # n < k
    alphas = [0.5, 10.0]
    dual = fit_path(Y, y, 4, alphas, xp=xp, keep_raw=1000, gemm_dtype="float64")
    primal = fit_path(Y, y, 4, alphas, xp=xp, gemm_dtype="float64")
    assert dual.solver.startswith("dual/") and not primal.solver.startswith("dual/")
    np.testing.assert_allclose(to_host(dual.coefs), to_host(primal.coefs), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(to_host(dual.intercepts), to_host(primal.intercepts), rtol=1e-6, atol=1e-9)
    sk = RidgeClassifier(alpha=10.0).fit(Y.astype(np.float64), y)
    np.testing.assert_allclose(to_host(dual.coefs[1]).T, sk.coef_, rtol=1e-6, atol=1e-9)


def test_cholesky_failure_falls_back_to_eigh(xp):
    # On CuPy this is the cupyx.errstate(linalg="raise") gotcha: without it cholesky returns NaNs.
    G = np.diag([1.0, -0.5, 2.0])  # G + 0.1 I is indefinite: Cholesky must fail
    B = np.ones((3, 2))
    W, used = solve_ridge_path(xp.asarray(G), xp.asarray(B), [0.1], solver="cholesky")
    assert used == "eigh (cholesky failed)"
    np.testing.assert_allclose((G + 0.1 * np.eye(3)) @ to_host(W[0]), B, atol=1e-12)


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, np.inf, []])
def test_bad_alphas_raise(bad):
    with pytest.raises(ValueError, match="alphas must be finite and > 0"):
        check_alphas(bad)
    with pytest.raises(ValueError, match="alphas must be finite and > 0"):
        solve_ridge_path(np.eye(2), np.ones((2, 1)), [1.0, bad] if np.ndim(bad) == 0 else bad)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_features_name_the_stage(value, xp):
    Y, y = opu_like(20, 5)
    Y[3, 2] = value
    Y = xp.asarray(Y)
    with pytest.raises(ValueError, match=r"ridge accumulation \(projected features\): found"):
        NormalEquations().update(Y, one_vs_all_targets(xp.asarray(y), 4))
    with pytest.raises(ValueError, match="^my stage: found"):
        check_finite(Y, "my stage")
