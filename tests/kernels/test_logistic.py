"""kernels/logistic.py and the logistic head against scikit-learn's LogisticRegression (multinomial,
lbfgs) and brute-force K-fold: the optimum, the row-space reduction, warm starts, the choice of
alpha, and the classifier's head policy (auto, the row budget, refused combinations)."""
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from engine.classifier import TransferClassifier
from kernels import logistic as L
from kernels.selection import SelectionError, choose, fold_of, search
from kernels.xp import to_host


def _problem(n, k, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    X = rng.standard_normal((n, k)) + 0.8 * rng.standard_normal((classes, k))[y]
    return X, y


def _sk(X, y, alpha, fit_intercept=True):
    return LogisticRegression(C=1 / alpha, tol=1e-12, max_iter=20000, fit_intercept=fit_intercept).fit(X, y)


@pytest.mark.parametrize("fit_intercept", [True, False])
@pytest.mark.parametrize("alpha", [0.3, 3.0, 30.0])
def test_fit_finds_sklearns_optimum(alpha, fit_intercept, xp):
    X, y = _problem(150, 20)
    W, b, it, converged = L.fit(xp.asarray(X), xp.asarray(y), 4, alpha, tol=1e-10, max_iter=5000,
                                fit_intercept=fit_intercept)
    ref = _sk(X, y, alpha, fit_intercept)
    assert converged
    W, b = to_host(W), to_host(b)
    assert np.abs(W - ref.coef_.T).max() < 1e-5 * max(1.0, np.abs(ref.coef_).max())
    if fit_intercept:  # softmax ignores a constant added to every intercept: compare them centred
        assert np.allclose(b - b.mean(), ref.intercept_ - ref.intercept_.mean(), atol=1e-5)
    else:
        assert np.all(b == 0)


def test_row_space_solves_the_same_problem_in_fewer_columns(xp):
    X, y = _problem(50, 300, classes=3)  # n < k: the model lives in the 50 rows' span
    space = L.RowSpace(xp.asarray(X))
    assert space.reduced and space.Z.shape == (50, 50)
    A, b, _, _ = L.fit(space.Z, xp.asarray(y), 3, 2.0, tol=1e-11, max_iter=5000)
    ref = _sk(X, y, 2.0)
    W = to_host(space.coef(A))
    assert np.abs(W - ref.coef_.T).max() < 1e-5 * np.abs(ref.coef_).max()
    Xo = np.random.default_rng(1).standard_normal((7, 300))  # other rows, through the basis: sklearn's probabilities
    P = to_host(L.probabilities(space.transform(xp.asarray(Xo)), A, b))
    assert np.allclose(P, ref.predict_proba(Xo), atol=1e-5)
    X2, _ = _problem(80, 30)
    assert L.RowSpace(X2).Z is X2  # n >= k: nothing to gain


def test_features_of_any_scale_give_the_same_model():
    """Random-weight networks give features near 1e-8: the problem on c X with alpha c² is the same
    one (W / c), and must converge the same, not stop at once on a tiny gradient."""
    X, y = _problem(150, 20)
    W, b, _, _ = L.fit(X, y, 4, 3.0, tol=1e-10, max_iter=5000)
    for c in (1e-8, 1e4):
        Wc, bc, it, converged = L.fit(X * c, y, 4, 3.0 * c ** 2, tol=1e-10, max_iter=5000)
        assert converged and it > 5
        assert np.abs(Wc * c - W).max() < 1e-5 * np.abs(W).max()
        assert np.allclose(bc - bc.mean(), b - b.mean(), atol=1e-5)


def test_warm_start_reaches_the_same_optimum():
    X, y = _problem(120, 15)
    W1, b1, _, _ = L.fit(X, y, 4, 10.0, tol=1e-11, max_iter=5000)
    W0, b0, _, _ = L.fit(X, y, 4, 0.1, tol=1e-11, max_iter=5000)
    W2, b2, it2, _ = L.fit(X, y, 4, 10.0, W0, b0, tol=1e-11, max_iter=5000)
    assert np.abs(W1 - W2).max() < 1e-6 and np.allclose(b1 - b1.mean(), b2 - b2.mean(), atol=1e-6)
    assert it2 > 0


def test_kfold_scores_equal_brute_force_sklearn_fits():
    X, y = _problem(120, 10)
    alphas = np.array([0.1, 3.0, 100.0])
    acc, sq, n, solver = L.kfold_scorer(X, y, 4, 3, seed=5, tol=1e-10)(alphas)
    fold = fold_of(np.arange(len(y)), 3, 5)
    want_acc, want_sq = np.zeros(3), np.zeros(3)
    for f in range(3):
        te = fold == f
        for i, a in enumerate(alphas):
            ref = _sk(X[~te], y[~te], a)
            P = ref.predict_proba(X[te])
            want_acc[i] += (ref.predict(X[te]) == y[te]).sum()
            want_sq[i] += ((P - np.eye(4)[y[te]]) ** 2).sum()
    assert n == 120 and "kfold(3)" in solver
    assert np.allclose(acc, want_acc / 120, atol=1 / 120 + 1e-12)  # at most one borderline row apart
    assert np.allclose(sq, want_sq, rtol=1e-4)


def test_holdout_scores_equal_sklearn():
    X, y = _problem(200, 12)
    models = {}
    acc, sq, n, _ = L.holdout_scorer(X[:150], y[:150], X[150:], y[150:], 4, models=models)(np.array([0.5, 50.0]))
    for i, a in enumerate((0.5, 50.0)):
        ref = _sk(X[:150], y[:150], a)
        assert acc[i] == pytest.approx(ref.score(X[150:], y[150:]), abs=1 / 50 + 1e-12)
        W, b = models[a]
        assert np.abs(W - ref.coef_.T).max() < 1e-3 * np.abs(ref.coef_).max()
    assert n == 50


@pytest.mark.parametrize("alpha", [0, -1.0, float("nan"), float("inf")])
def test_bad_alpha_is_refused(alpha):
    X, y = _problem(20, 3)
    with pytest.raises(ValueError, match="finite and > 0"):
        L.fit(X, y, 4, alpha)


# ----------------------------------------------------------------------------- the classifier's head
def test_logistic_head_chooses_alpha_as_search_says_and_refits_on_all_rows():
    X, y = _problem(300, 16)
    clf = TransferClassifier(encoder="none", projection="none", head="logistic", folds=4, seed=3)
    clf.fit(X.astype(np.float32), y)
    sel = clf.selection_
    assert clf.head_ == "logistic" and sel.method == "kfold(4)" and clf.n_final_ == 300
    # the same grid scored here, from scratch: the same choice
    Z = L.RowSpace(X.astype(np.float32)).Z
    again = search(L.kfold_scorer(Z, y, 4, 4, 3), sel.alphas, False, "kfold(4)")
    assert choose(again.alphas, again.accuracy, again.squared_error) == sel.best
    ref = _sk(X, y, clf.alpha_)
    assert np.mean(clf.predict(X.astype(np.float32)) == ref.predict(X)) >= 0.99
    back = TransferClassifier.from_state(*clf.state())
    assert back.head_ == "logistic" and np.array_equal(back.predict(X.astype(np.float32)), clf.predict(X.astype(np.float32)))


def _digits():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return X.astype(np.float32), y


def test_auto_head_keeps_the_head_with_the_better_held_out_score():
    """auto = both heads scored as each would be alone (ridge: exact LOO; logistic: 5-fold), the
    better kept, ties to ridge; its model is that head's model. On digits the pixels favour the
    logistic head and 2,000 random ReLU features of them favour ridge: both branches are taken."""
    X, y = _digits()
    R = np.random.default_rng(0).standard_normal((64, 2000)).astype(np.float32)
    winners = {}
    for name, f in (("pixels", lambda A: A), ("random relu", lambda A: np.maximum(A @ R / 8, 0))):
        F, Ft, yf, yt = f(X[:900]), f(X[900:1300]), y[:900], y[900:1300]
        auto = TransferClassifier(encoder="none", projection="none", head="auto").fit(F, yf)
        alone = {h: TransferClassifier(encoder="none", projection="none", head=h).fit(F, yf)
                 for h in ("ridge", "logistic")}
        want = {h: float(c.selection_.accuracy[c.selection_.best]) for h, c in alone.items()}
        assert auto.head_scores_["ridge"] == pytest.approx(want["ridge"])
        assert auto.head_scores_["logistic"] == pytest.approx(want["logistic"])
        winners[name] = winner = "logistic" if want["logistic"] > want["ridge"] else "ridge"
        assert auto.head_ == winner and auto.alpha_ == pytest.approx(alone[winner].alpha_)
        assert np.array_equal(auto.predict(Ft), alone[winner].predict(Ft))
        assert TransferClassifier.from_state(*auto.state()).head_scores_ == pytest.approx(auto.head_scores_)
    assert winners == {"pixels": "logistic", "random relu": "ridge"}


def test_auto_head_hands_rows_past_the_budget_to_ridge_and_logistic_refuses():
    X, y = _problem(400, 8)
    X = X.astype(np.float32)
    ridge = TransferClassifier(encoder="none", projection="none", head="ridge").fit(X, y)
    auto = TransferClassifier(encoder="none", projection="none", head="auto")
    auto.loo_max_rows = 100  # fewer than the rows: no logistic head, and ridge's own LOO turns to K-fold
    ridge_small = TransferClassifier(encoder="none", projection="none", head="ridge")
    ridge_small.loo_max_rows = 100
    auto.fit(X, y, batch_size=64)
    ridge_small.fit(X, y, batch_size=64)
    assert auto.head_ == "ridge" and auto.n_train_ == 400 and auto.head_scores_ is None
    assert np.allclose(auto.coef_, ridge_small.coef_) and auto.alpha_ == ridge_small.alpha_
    assert ridge.head_ == "ridge"
    strict = TransferClassifier(encoder="none", projection="none", head="logistic")
    strict.loo_max_rows = 100
    with pytest.raises(MemoryError, match="keeps the training rows in memory.*--head ridge"):
        strict.fit(X, y, batch_size=64)
    # select loo is ridge's: auto goes to ridge, logistic refuses
    assert TransferClassifier(encoder="none", projection="none", head="auto", select="loo").fit(X, y).head_ == "ridge"
    with pytest.raises(SelectionError, match="leave-one-out.*--select kfold"):
        TransferClassifier(encoder="none", projection="none", head="logistic", select="loo").fit(X, y)


@pytest.mark.parametrize("bad,match", [({"head": "svm"}, "unknown head 'svm'"),
                                       ({"head": "logistic", "alphas": "reference"}, "is a ridge grid")])
def test_bad_head_settings_are_refused(bad, match):
    X, y = _problem(40, 4)
    with pytest.raises(ValueError, match=match):
        TransferClassifier(encoder="none", projection="none", **bad).fit(X.astype(np.float32), y)


def test_holdout_head_scores_validation_and_refits_on_train_plus_validation():
    X, y = _problem(300, 12)
    X = X.astype(np.float32)
    clf = TransferClassifier(encoder="none", projection="none", head="logistic", alphas=[1.0, 100.0])
    clf.fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:])
    sel = clf.selection_
    assert sel.method == "holdout" and clf.n_final_ == 300 and clf.n_validation_ == 100
    for a, acc in clf.validation_scores_.items():
        assert acc == pytest.approx(_sk(X[:200], y[:200], a).score(X[200:], y[200:]), abs=1 / 100 + 1e-12)
    ref = _sk(X, y, clf.alpha_)  # the final model: every row
    assert np.mean(clf.predict(X) == ref.predict(X)) >= 0.99


def test_one_alpha_with_validation_rows_refits_on_them_as_ridge_does():
    """No selection to run, but the validation rows still join the final model (refit_validation),
    and are kept out of it when told (the model then equals train alone)."""
    X, y = _problem(300, 12)
    X = X.astype(np.float32)
    both = TransferClassifier(encoder="none", projection="none", head="logistic", alphas=[5.0])
    both.fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:])
    assert both.selection_ is None and both.n_final_ == 300
    assert np.mean(both.predict(X) == _sk(X, y, 5.0).predict(X)) >= 0.99
    train = TransferClassifier(encoder="none", projection="none", head="logistic", alphas=[5.0],
                               refit_validation=False).fit(X[:200], y[:200], X_val=X[200:], y_val=y[200:])
    assert train.n_final_ == 200
    ref = _sk(X[:200], y[:200], 5.0)
    assert np.abs(train.coef_ - ref.coef_.T).max() < 1e-3 * np.abs(ref.coef_).max()
