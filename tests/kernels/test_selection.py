"""kernels/selection.py against brute force and scikit-learn: exact LOO, K-fold from statistics,
the relative grid, tie-breaking, the dual/primal final solve, and the classifier's use of them."""
import warnings

import numpy as np
import pytest

from engine.classifier import TransferClassifier
from engine.ridge_training import SelectionWarning
from kernels.ridge import NormalEquations, one_vs_all_targets
from kernels.selection import (FoldedNormalEquations, SelectionError, SpectralRidge, choose, fold_of,
                               kfold_squared_error, relative_alphas, search)
from kernels.xp import to_host


def _problem(n, k, classes=3, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centers = rng.standard_normal((classes, k)) * signal
    return rng.random((n, k)) + centers[y] * 0.3, y


def _refit(Y, T, a, fit_intercept=True):
    mu = Y.mean(0) if fit_intercept else np.zeros(Y.shape[1])
    mt = T.mean(0) if fit_intercept else np.zeros(T.shape[1])
    W = np.linalg.solve((Y - mu).T @ (Y - mu) + a * np.eye(Y.shape[1]), (Y - mu).T @ (T - mt))
    return W, mt - mu @ W


@pytest.mark.parametrize("n,k", [(40, 60), (90, 25)])  # dual (n <= k) and primal (n > k)
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_loo_equals_brute_force_refits(n, k, fit_intercept, xp):
    Y, y = _problem(n, k)
    T = one_vs_all_targets(y, 3)
    sp = SpectralRidge(xp.asarray(Y), xp.asarray(T), fit_intercept, gemm_dtype="float64", chunk=17)  # chunks: primal in pieces
    assert sp.dual == (n <= k)
    for a in (1e-3, 0.3, 30.0):
        S = to_host(sp.loo_predictions(a)[0])
        for i in range(n):
            keep = np.arange(n) != i
            W, b = _refit(Y[keep], T[keep], a, fit_intercept)
            np.testing.assert_allclose(S[i], Y[i] @ W + b, rtol=0, atol=1e-8)
        W, b = map(to_host, sp.coef(a))
        W0, b0 = _refit(Y, T, a, fit_intercept)
        np.testing.assert_allclose(W, W0, atol=1e-9)
        np.testing.assert_allclose(b, b0, atol=1e-9)


def test_loo_matches_sklearn_ridge_classifier_cv():
    """Both by LOO squared error: the same errors per row and alpha, the same alpha."""
    from sklearn.linear_model import RidgeClassifierCV

    Y, y = _problem(120, 50, classes=4, seed=3)
    alphas = relative_alphas(1.0, (-3, 3), 2)
    sk = RidgeClassifierCV(alphas=alphas, store_cv_results=True).fit(Y, y)
    sp = SpectralRidge(Y, one_vs_all_targets(y, 4), gemm_dtype="float64")
    acc, err, n = sp.loo_scores(alphas)  # no labels: squared error only, as sklearn's GCV
    assert acc is None and n == 120
    np.testing.assert_allclose(err, sk.cv_results_.sum(axis=(0, 1)), rtol=1e-8)
    assert alphas[choose(alphas, None, err)] == pytest.approx(sk.alpha_)


def test_kfold_statistics_equal_explicit_per_fold_refits(xp):
    Y, y = _problem(400, 20, seed=5)
    T = one_vs_all_targets(y, 3)
    folded = FoldedNormalEquations(4, seed=9, gemm_dtype="float64")
    for i in range(0, 400, 37):  # batch boundaries must not matter: folds hash the row position
        folded.update(xp.asarray(Y[i:i + 37]), xp.asarray(T[i:i + 37]))
    alphas = [0.01, 1.0, 100.0]
    err, n, used = kfold_squared_error(folded, alphas)
    f = fold_of(np.arange(400), 4, 9)
    ref = np.zeros(3)
    for j in range(4):
        for ai, a in enumerate(alphas):
            W, b = _refit(Y[f != j], T[f != j], a)
            ref[ai] += ((Y[f == j] @ W + b - T[f == j]) ** 2).sum()
    np.testing.assert_allclose(err, ref, rtol=1e-9)
    assert n == 400 and used.startswith("kfold(4)")
    # the folds sum to one pass over every row
    G, B = folded.total().gram()
    Yc = Y - Y.mean(0)
    np.testing.assert_allclose(to_host(G), Yc.T @ Yc, rtol=1e-9, atol=1e-9)


def test_fold_assignment_is_a_seeded_balanced_hash():
    f = fold_of(np.arange(100_000), 5, 1)
    counts = np.bincount(f, minlength=5)
    assert abs(counts - 20_000).max() < 600  # ~4 sigma of a multinomial
    assert not np.array_equal(f, fold_of(np.arange(100_000), 5, 2))
    np.testing.assert_array_equal(f[1000:2000], fold_of(np.arange(1000, 2000), 5, 1))


def test_squared_error_from_statistics_equals_direct():
    Y, y = _problem(150, 12, seed=2)
    T = one_vs_all_targets(y, 3)
    W = np.random.default_rng(0).standard_normal((12, 3))
    b = np.array([0.1, -0.2, 0.3])
    ne = NormalEquations(gemm_dtype="float64")
    for i in range(0, 150, 40):
        ne.update(Y[i:i + 40], T[i:i + 40])
    assert ne.squared_error(W, b) == pytest.approx(((Y @ W + b - T) ** 2).sum(), rel=1e-10)


def test_choose_breaks_accuracy_ties_by_error_not_size():
    alphas = np.array([1.0, 10.0, 100.0, 1000.0])
    assert choose(alphas, [0.9, 0.95, 0.95, 0.95], [5.0, 3.0, 2.0, 4.0]) == 2
    assert choose(alphas, None, [5.0, 3.0, 2.0, 4.0]) == 2
    assert choose(alphas, [0.9, 0.9, 0.9, 0.9], [1.0, 1.0, 1.0, 1.0]) == 3  # exact ties: larger alpha


def test_auto_never_picks_a_tied_alpha_by_size_alone():
    """Separable classes: LOO accuracy ties at 100 % over most of the grid; the choice is the
    lowest LOO squared error among them, which the brute-force errors confirm."""
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 20)
    X = rng.standard_normal((40, 30)).astype(np.float32) + 4.0 * y[:, None]
    clf = TransferClassifier(projection="none", encoder="threshold:2").fit(X, y)
    sel = clf.selection_
    assert sel.method == "loo"
    tied = np.flatnonzero(sel.accuracy == sel.accuracy.max())
    assert len(tied) > 3 and sel.best != tied.max()
    assert sel.best == tied[np.argmin(sel.squared_error[tied])]


def test_relative_grid_follows_the_feature_scale():
    """Scaling the features by c scales tr(G)/k by c², so the chosen alpha moves by c² and the
    predictions stay the same."""
    Y, y = _problem(80, 40, seed=4)
    Y = Y.astype(np.float32)
    fits = []
    for c in (1.0, 1000.0):
        clf = TransferClassifier(projection="none")
        clf.encode = lambda X: X  # raw floats: exercise the ridge, not the encoder
        clf.fit(Y * c, y)
        fits.append(clf)
    assert fits[1].alpha_ == pytest.approx(fits[0].alpha_ * 1e6, rel=1e-6)
    np.testing.assert_array_equal(fits[0].predict(Y), fits[1].predict(Y * 1000.0))


def test_grid_is_widened_past_an_edge():
    """Labels that are pure noise: more regularization always helps, so the best alpha sits on the
    top edge; the grid grows past it (twice) and the remaining edge is reported."""
    rng = np.random.default_rng(0)
    Y = rng.random((60, 10))
    y = rng.integers(0, 2, 60)
    sp = SpectralRidge(Y, one_vs_all_targets(y, 2), gemm_dtype="float64")
    grid = relative_alphas(1.0)
    sel = search(lambda a: (None, *sp.loo_scores(a)[1:], sp.solver), grid, widen=True, method="loo")
    assert sel.alphas[-1] > grid[-1] * 1e3 and sel.alphas[0] == grid[0]
    assert sel.best == len(sel.alphas) - 1 and "largest of the grid" in sel.warnings[0]
    fixed = search(lambda a: (None, *sp.loo_scores(a)[1:], sp.solver), grid, widen=False, method="loo")
    assert len(fixed.alphas) == len(grid) and "widen --alphas" in fixed.warnings[0]


def test_dual_and_primal_final_solves_agree():
    """n < k: the model solved in the kernel form equals the primal Cholesky solution."""
    Y, y = _problem(50, 200, seed=6)
    Y = Y.astype(np.float32)
    T = one_vs_all_targets(y, 3)
    dual = NormalEquations(keep_raw=1000, gemm_dtype="float64").update(Y, T).solve_path([3.0])
    primal = NormalEquations(gemm_dtype="float64").update(Y, T).solve_path([3.0])
    assert dual.solver.startswith("dual") and not primal.solver.startswith("dual")
    np.testing.assert_allclose(dual.coefs[0], primal.coefs[0], rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(dual.intercepts[0], primal.intercepts[0], atol=1e-9)
    # and through the classifier: dual LOO + eigh final vs K-fold + primal final at the same alpha
    a = TransferClassifier(projection="none", encoder="threshold:0.5", alphas=[3.0]).fit(Y, y)
    b = TransferClassifier(projection="none", encoder="threshold:0.5", alphas=[3.0], select="kfold")
    b.loo_max_rows = 0
    b.fit(Y, y)
    assert "dual" in a.solver_ and "dual" not in b.solver_
    np.testing.assert_array_equal(a.predict(Y), b.predict(Y))
    np.testing.assert_allclose(a.coef_, b.coef_, rtol=1e-4, atol=1e-6 * np.abs(a.coef_).max())


def test_merged_train_and_carve_out_equal_one_pass():
    Y, y = _problem(300, 30, seed=7)
    T = one_vs_all_targets(y, 3)
    one = NormalEquations(gemm_dtype="float64").update(Y, T)
    train = FoldedNormalEquations(5, keep_raw_bytes=0, gemm_dtype="float64").update(Y[:250], T[:250])
    merged = train.total().merge(NormalEquations(gemm_dtype="float64").update(Y[250:], T[250:]))
    for fi in (True, False):
        np.testing.assert_allclose(merged.gram(fi)[0], one.gram(fi)[0], rtol=1e-10, atol=1e-8)
        np.testing.assert_allclose(merged.gram(fi)[1], one.gram(fi)[1], rtol=1e-10, atol=1e-8)
    assert merged.sum_tt == one.sum_tt == 900.0


def test_holdout_scores_every_alpha_as_sklearn_and_picks_by_choose():
    """Holdout selection: each alpha's validation accuracy and squared error equal those of
    sklearn's RidgeClassifier fitted on the training rows; the pick is choose()'s (accuracy, then
    error, then the larger alpha); without refit the final model is sklearn's at that alpha."""
    from sklearn.linear_model import RidgeClassifier

    Y, y = _problem(400, 30, seed=2)
    Y = Y.astype(np.float32)
    alphas = [1e-3, 1.0, 1e2, 1e7]
    clf = TransferClassifier(projection="none", alphas=alphas, select="holdout", refit_validation=False)
    clf.encode = lambda X: X  # raw floats: exercise the ridge, not the encoder
    clf.fit(Y[:300], y[:300], Y[300:], y[300:])
    sel, Yv, Tv = clf.selection_, Y[300:].astype(np.float64), one_vs_all_targets(y[300:], 3)
    assert sel.method == "holdout" and sel.n_scored == 100 and list(sel.alphas) == alphas
    sks = [RidgeClassifier(alpha=a, solver="cholesky").fit(Y[:300].astype(np.float64), y[:300]) for a in alphas]
    np.testing.assert_array_equal(sel.accuracy, [sk.score(Yv, y[300:]) for sk in sks])
    np.testing.assert_allclose(sel.squared_error, [((sk.decision_function(Yv) - Tv) ** 2).sum() for sk in sks],
                               rtol=1e-5)
    assert sel.best == choose(alphas, sel.accuracy, sel.squared_error) and clf.alpha_ == alphas[sel.best]
    best = sks[sel.best]
    np.testing.assert_allclose(clf.coef_, best.coef_.T, rtol=1e-4, atol=1e-6 * np.abs(best.coef_).max())
    np.testing.assert_allclose(clf.intercept_, best.intercept_, rtol=1e-4, atol=1e-6)


def test_final_model_uses_every_row():
    """holdout: the final model is the ridge solution on train + validation at the chosen alpha."""
    Y, y = _problem(200, 30, seed=8)
    Y = Y.astype(np.float32)
    clf = TransferClassifier(projection="none", encoder="threshold:0.6", select="holdout")
    clf.fit(Y[:150], y[:150], Y[150:], y[150:])
    bits = (Y > 0.6).astype(np.float64)
    W, b = _refit(bits, one_vs_all_targets(y, 3), clf.alpha_)
    np.testing.assert_allclose(clf.coef_, W, rtol=1e-4, atol=1e-6 * np.abs(W).max())
    assert clf.n_final_ == 200 and clf.n_train_ == 150


def test_single_image_class_is_reported_and_still_fitted():
    Y, y = _problem(61, 20, seed=9)
    y[y == 2] = 0
    y[0] = 2  # class 2 has one image
    with pytest.warns(SelectionWarning, match=r"single training image.*left out of the LOO score"):
        clf = TransferClassifier(projection="none", encoder="threshold:0.5").fit(Y.astype(np.float32), y)
    assert clf.selection_.n_scored == 60 and "single training image" in clf.selection_.warnings[0]
    assert list(clf.classes_) == [0, 1, 2]


def test_fewer_rows_than_folds_is_a_clear_error():
    Y, y = _problem(4, 10)
    clf = TransferClassifier(projection="none", encoder="threshold:0.5", select="kfold", folds=5)
    with pytest.raises(SelectionError, match=r"K-fold with 5 folds needs at least 5 training rows.*--select loo"):
        clf.fit(Y.astype(np.float32), y)


def test_holdout_without_validation_is_a_clear_error():
    Y, y = _problem(30, 10)
    with pytest.raises(SelectionError, match=r"--select holdout needs validation data"):
        TransferClassifier(projection="none", select="holdout").fit(Y.astype(np.float32), y)


def test_kfold_selection_agrees_with_loo_on_a_clear_problem():
    """Both estimate the same risk: on a problem with a clear optimum they pick alphas within a
    decade of each other, and within a decade of the test-set optimum."""
    Y, y = _problem(600, 40, seed=11, signal=0.8)
    Y = Y.astype(np.float32)
    kw = dict(projection="none")
    fits = {}
    for sel in ("loo", "kfold"):
        clf = TransferClassifier(select=sel, **kw)
        clf.encode = lambda X: X
        if sel == "kfold":
            clf.loo_max_rows = 0
        fits[sel] = clf.fit(Y[:400], y[:400])
    assert fits["kfold"].selection_.method == "kfold(5)"
    assert abs(np.log10(fits["loo"].alpha_ / fits["kfold"].alpha_)) <= 1.0
    assert fits["loo"].score(Y[400:], y[400:]) == pytest.approx(fits["kfold"].score(Y[400:], y[400:]), abs=0.03)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clear optimum lies inside the grid: no edge warning
        assert not fits["loo"].selection_.warnings


def test_alpha_scale_from_rows_and_from_statistics_agree():
    from kernels.selection import alpha_scale

    Y, y = _problem(5000, 30, seed=12)  # more than one 4,096-row chunk
    T = one_vs_all_targets(y, 3)
    Yc = Y - Y.mean(0)
    ref = (Yc * Yc).sum() / 30
    raw = FoldedNormalEquations(5, keep_raw_bytes=1 << 30).update(Y[:3000], T[:3000]).update(Y[3000:], T[3000:])
    folded = FoldedNormalEquations(5, keep_raw_bytes=0, gemm_dtype="float64").update(Y, T)
    assert raw.rows is not None and folded.rows is None
    assert alpha_scale(raw) == pytest.approx(ref, rel=1e-12)
    assert alpha_scale(folded) == pytest.approx(ref, rel=1e-10)


def test_flat_errors_below_the_spectrum_go_to_the_larger_alpha():
    """n << k: for alphas far below the smallest eigenvalue the model no longer changes and the
    errors differ by rounding only; they count as tied, so no spurious edge and no widening."""
    alphas = np.array([1e-9, 1e-8, 1e-7, 1e-3])
    assert choose(alphas, None, [1.0, 1.0 + 1e-12, 1.0 - 1e-12, 2.0]) == 2
    Y, y = _problem(30, 400, seed=13)
    sp = SpectralRidge(Y, one_vs_all_targets(y, 3))
    sel = search(lambda a: (*sp.loo_scores(a, y), sp.solver), relative_alphas(1.0, (-12, -6)), widen=True,
                 method="loo")
    assert sel.alphas[0] == pytest.approx(1e-12)  # not widened downwards past a flat bottom
