"""Multinomial logistic regression with an L2 penalty, NumPy and CuPy alike: the logistic head.

    minimize over W (k, c), b (c,):   sum_i [logsumexp(x_i W + b) - (x_i W + b)_{y_i}] + alpha/2 ||W||²

(scikit-learn's LogisticRegression(C=1/alpha), multinomial; the intercept is not penalized). The
problem is convex, strictly in W for alpha > 0 (the intercepts are defined up to a common
constant, which softmax ignores), so its predictions have one optimum; L-BFGS (Nocedal & Wright,
algorithm 7.4, memory 10) with a backtracking Armijo line search finds it. A curvature pair with
sᵀy <= 0 (a step along that constant alone) is skipped.

When the rows are fewer than the features (n < k: pooled maps, many optical components) the model
lives in the rows' span: X = U S Vᵀ, W = V A, ||W|| = ||A||, so the problem on the n x r scores
Z = U S is the same problem, r / k times cheaper per iteration (`RowSpace`). Cross-validation
folds share that basis: a fold's optimum lies in the span of its own rows, inside the full one.

Alpha is chosen as for ridge (kernels/selection.py's search and choose): accuracy on held-out
rows, ties to the lowest squared error of the probabilities (the Brier score), then the larger
alpha; K-fold on the training rows (fold_of's hashed folds) or a holdout set.
"""
from __future__ import annotations

import numpy as np

from kernels.solvers import check_alphas
from kernels.xp import get_array_module

MEMORY = 10
MAX_ITER = 500
TOL = 1e-5  # stop when ||grad||_inf <= TOL * ||grad at the zero model||_inf
CV_TOL = 1e-2  # while scoring alphas: the accuracies settle long before the coefficients do (measured:
# clothing full set, 1e-2 / 3e-3 / 1e-3: CV 19 / 35 / 58 s, the chosen alphas all score 91.9 % on test)
# The relative grid: alpha / (mean squared norm of the centred rows), 1 per decade. A best alpha
# on an edge widens it (kernels/selection.search). On pooled MobileNetV2 features of clothing's
# full set the 5-fold accuracy was flat within 0.2 points from 1e-6 to 1e-2 of this scale.
GRID = tuple(10.0 ** e for e in range(-5, 0))


def _loss_grad(Z, y, onehot_rows, W, b, alpha):
    """(objective, dW, db) at (W, b); Z (n, r), y (n,) int."""
    xp = get_array_module(Z)
    S = Z @ W + b
    S -= S.max(axis=1, keepdims=True)
    E = xp.exp(S)
    tot = E.sum(axis=1, keepdims=True)
    loss = float((xp.log(tot[:, 0]) - S[onehot_rows, y]).sum()) + 0.5 * alpha * float((W * W).sum())
    P = E / tot
    P[onehot_rows, y] -= 1
    return loss, Z.T @ P + alpha * W, P.sum(axis=0)


def fit(Z, y, n_classes: int, alpha: float, W0=None, b0=None, max_iter: int = MAX_ITER, tol: float = TOL,
        fit_intercept: bool = True):
    """(W (r, c), b (c,), iterations, converged) minimizing the penalized multinomial loss on Z, y.

    Z: (n, r) float32 or float64 (the arithmetic follows it), y: (n,) ints in [0, n_classes).
    W0, b0: a warm start (another alpha's answer, say).

    Scale-free: it solves the same problem on Z / c (c: the rows' root mean squared norm), with
    alpha / c² and W c, so features of any magnitude (random-weight networks give 1e-8) converge
    alike; the stopping test is relative to the gradient at the zero model, whatever the start."""
    xp = get_array_module(Z)
    alpha = float(check_alphas(alpha)[0])
    n, r = Z.shape
    flat = Z.reshape(-1)
    c = float(flat @ flat) ** 0.5 / max(n, 1) ** 0.5  # no n x r temporaries: fit runs once per fold and alpha
    if not np.isfinite(c) or c == 0:
        c = 1.0
    Z, alpha = Z * Z.dtype.type(1.0 / c), alpha / c ** 2
    y = xp.asarray(y).astype(xp.int64)
    rows = xp.arange(n)
    if fit_intercept:  # the class log-frequencies: the optimum of the intercept alone
        counts = xp.bincount(y, minlength=n_classes).astype(Z.dtype)
        b_zero = xp.log(xp.maximum(counts, 0.5) / n)
    else:
        b_zero = xp.zeros(n_classes, Z.dtype)
    W = xp.zeros((r, n_classes), Z.dtype) if W0 is None else xp.array(W0, dtype=Z.dtype) * Z.dtype.type(c)
    b = b_zero if b0 is None else xp.array(b0, dtype=Z.dtype)

    def flat(gW, gb):
        return xp.concatenate([gW.ravel(), gb if fit_intercept else xp.zeros_like(gb)])

    def evaluate(theta):
        W_, b_ = theta[:r * n_classes].reshape(r, n_classes), theta[r * n_classes:]
        f_, gW, gb = _loss_grad(Z, y, rows, W_, b_, alpha)
        return f_, flat(gW, gb)

    theta = xp.concatenate([W.ravel(), b])
    f, g = evaluate(theta)
    g0 = g if W0 is None and b0 is None else evaluate(xp.concatenate([xp.zeros_like(W).ravel(), b_zero]))[1]
    g0 = max(float(xp.abs(g0).max()), float(np.finfo(Z.dtype).tiny))
    S_, Y_, R_ = [], [], []
    it, converged = 0, float(xp.abs(g).max()) <= tol * g0
    while not converged and it < max_iter:
        it += 1
        q = g.copy()  # two-loop recursion: d = -H g
        coefs = []
        for s, yy, rho in zip(reversed(S_), reversed(Y_), reversed(R_)):
            a = rho * float(s @ q)
            coefs.append(a)
            q -= a * yy
        if S_:
            q *= float(S_[-1] @ Y_[-1]) / float(Y_[-1] @ Y_[-1])
        else:
            q /= max(1.0, float(xp.sqrt(g @ g)))
        for (s, yy, rho), a in zip(zip(S_, Y_, R_), reversed(coefs)):
            q += (a - rho * float(yy @ q)) * s
        d = -q
        slope = float(g @ d)
        if slope >= 0:  # not a descent direction (rounding): restart from steepest descent
            S_, Y_, R_ = [], [], []
            d, slope = -g, -float(g @ g)
        step = 1.0
        for _ in range(40):
            new = theta + step * d
            f_new, g_new = evaluate(new)
            if f_new <= f + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break  # no decrease left at float precision: as converged as it gets
        s, yy = new - theta, g_new - g
        sy = float(s @ yy)
        if sy > 0:
            S_.append(s), Y_.append(yy), R_.append(1.0 / sy)
            if len(S_) > MEMORY:
                S_.pop(0), Y_.pop(0), R_.pop(0)
        rel = abs(f - f_new) / max(abs(f), 1.0)
        theta, f, g = new, f_new, g_new
        converged = float(xp.abs(g).max()) <= tol * g0 or rel < 1e-12
    W, b = theta[:r * n_classes].reshape(r, n_classes), theta[r * n_classes:]
    return W * W.dtype.type(1.0 / c), b, it, converged


def probabilities(Z, W, b):
    xp = get_array_module(Z)
    S = Z @ W + b
    S -= S.max(axis=1, keepdims=True)
    E = xp.exp(S)
    return E / E.sum(axis=1, keepdims=True)


class RowSpace:
    """X (n, k) -> scores Z (n, r) with W = V A (module docstring); the identity when n >= k."""

    def __init__(self, X):
        xp = get_array_module(X)
        n, k = X.shape
        self.X, self.reduced = X, n < k
        if not self.reduced:
            self.Z = X
            return
        X64 = X.astype(xp.float64)  # one float64 copy, not two
        G = X64 @ X64.T
        del X64
        s2, U = xp.linalg.eigh(G)
        keep = s2 > max(float(s2[-1]), 1e-300) * n * np.finfo(np.float64).eps
        s = xp.sqrt(s2[keep])
        self.U_over_s = (U[:, keep] / s).astype(X.dtype)
        self.Z = (U[:, keep] * s).astype(X.dtype)

    def transform(self, X2):
        """Other rows (m, k) -> their scores in the Z basis."""
        return X2 if not self.reduced else (X2 @ self.X.T) @ self.U_over_s

    def coef(self, A):
        """A (r, c) in the Z basis -> W (k, c) on the features."""
        return A if not self.reduced else self.X.T @ (self.U_over_s @ A)


def scale(Z) -> float:
    """Mean squared norm of the centred rows: the grid's unit."""
    xp = get_array_module(Z)
    Zc = Z - Z.mean(axis=0)
    return max(float((Zc.astype(xp.float64) ** 2).sum()) / len(Z), 1e-30)


def kfold_scorer(Z, y, n_classes: int, folds: int, seed: int, fit_intercept: bool = True, tol: float = CV_TOL):
    """score(alphas) -> (accuracy, squared error, n scored, solver) over K folds of Z's rows, for
    kernels/selection.search. Each fold walks the grid from the largest alpha down, warm-started."""
    from kernels.selection import fold_of

    xp = get_array_module(Z)
    y_host = np.asarray(y.get() if hasattr(y, "get") else y)
    fold = fold_of(np.arange(len(y_host)), folds, seed)
    y = xp.asarray(y_host)
    starts = {}  # fold -> (W, b) last solved: the next grid portion starts from it

    def score(alphas):
        order = np.argsort(alphas)[::-1]
        correct = np.zeros(len(alphas))
        sq = np.zeros(len(alphas))
        scored = 0
        for f in range(folds):
            test = fold == f
            if not test.any() or test.all():
                continue
            tr, te = xp.asarray(np.flatnonzero(~test)), xp.asarray(np.flatnonzero(test))
            scored += len(te)
            W, b = starts.get(f, (None, None))
            T = _onehot(y[te], n_classes, Z.dtype)
            Ztr, ytr, Zte = Z[tr], y[tr], Z[te]
            for i in order:
                W, b, _, _ = fit(Ztr, ytr, n_classes, alphas[i], W, b, tol=tol, fit_intercept=fit_intercept)
                P = probabilities(Zte, W, b)
                correct[i] += float((xp.argmax(P, axis=1) == y[te]).sum())
                sq[i] += float(((P - T) ** 2).sum())
            starts[f] = (W, b)
        return correct / max(scored, 1), sq, scored, f"logistic-lbfgs kfold({folds})"

    return score


def holdout_scorer(Z, y, Zv, yv, n_classes: int, fit_intercept: bool = True, models: dict | None = None):
    """score(alphas) on validation rows (Zv, yv), fitting on (Z, y); `models` collects alpha -> (W, b)."""
    xp = get_array_module(Z)
    T = _onehot(yv, n_classes, Z.dtype)
    last = [None, None]

    def score(alphas):
        acc, sq = np.zeros(len(alphas)), np.zeros(len(alphas))
        for i in np.argsort(alphas)[::-1]:
            W, b, _, _ = fit(Z, y, n_classes, alphas[i], *last, fit_intercept=fit_intercept)
            last[:] = [W, b]
            if models is not None:
                models[float(alphas[i])] = (W, b)
            P = probabilities(Zv, W, b)
            acc[i] = float((xp.argmax(P, axis=1) == yv).mean())
            sq[i] = float(((P - T) ** 2).sum())
        return acc, sq, len(yv), "logistic-lbfgs holdout"

    return score


def _onehot(y, n_classes: int, dtype):
    xp = get_array_module(y)
    T = xp.zeros((len(y), n_classes), dtype)
    T[xp.arange(len(y)), y] = 1
    return T
