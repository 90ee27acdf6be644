"""Alpha grid: otl's ridge (the classifier's default path) vs scikit-learn, side by side.

Features are realistic OPU outputs: noisy copies of per-class binary prototypes projected by
SimulatedOPU (exponential-like, non-negative). Both methods see the same float32 features.
1. holdout (what `--select auto` does when there is validation data): TransferClassifier with
   the reference's 15 alphas, final model on train only, vs refitting sklearn's RidgeClassifier per
   alpha; both pick by validation accuracy and are compared on their predictions (sklearn's ties
   go to the larger alpha, ours to the lower validation error: the note says when they differ).
2. leave-one-out (what `auto` does without validation data): our exact LOO over the default
   relative grid of 25 alphas vs sklearn's RidgeClassifierCV (its efficient LOO) on that grid,
   both by squared error; compared on the alpha chosen and the predictions.
Usage: python bench/bench_ridge.py [--quick] [--sizes 19363,3000] [--no-loo]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels.projection import SimulatedOPU  # noqa: E402

GRID = [m * 10.0 ** e for e in (3, 4, 5) for m in (1, 3, 5, 7, 9)]  # the reference's 15 alphas


def make_features(n, m, k_in=1024, n_classes=10, flip=0.47, seed=0):
    """(n, m) float32 OPU features and (n,) labels with signal: bits = class prototype, each
    bit flipped with probability `flip`, then |xR|^2."""
    rng = np.random.default_rng(seed)
    protos = rng.integers(0, 2, (n_classes, k_in), dtype=np.uint8)
    y = rng.integers(0, n_classes, n)
    bits = protos[y] ^ (rng.random((n, k_in)) < flip).astype(np.uint8)
    return SimulatedOPU(m, seed=seed).fit_transform(bits), y


def run_sklearn(Ytr, ytr, Yv, yv, alphas):
    from sklearn.linear_model import RidgeClassifier

    accs, preds = [], []
    for a in alphas:
        clf = RidgeClassifier(alpha=a).fit(Ytr, ytr)  # default solver ("auto" -> cholesky)
        preds.append(clf.predict(Yv))
        accs.append(float((preds[-1] == yv).mean()))
    accs = np.array(accs)
    best = max(np.flatnonzero(accs == accs.max()), key=lambda i: alphas[i])
    return best, accs, preds[best]


def run_ours(Ytr, ytr, Yv, yv, alphas, solver="auto"):
    from engine.classifier import TransferClassifier

    clf = TransferClassifier(projection="none", alphas=list(alphas), refit_validation=False, solver=solver)
    clf.fit(Ytr, ytr, Yv, yv, encoded=True)  # projected rows are taken as they are
    sel = clf.selection_
    return sel.best, sel.accuracy, clf.predict_indices(Yv, encoded=True), clf.solver_


def run_sklearn_loo(Ytr, ytr, alphas):
    from sklearn.linear_model import RidgeClassifierCV

    return RidgeClassifierCV(alphas=alphas).fit(Ytr, ytr)


def run_ours_loo(Ytr, ytr, alphas):
    from kernels.ridge import one_vs_all_targets
    from kernels.selection import SpectralRidge, choose

    sp = SpectralRidge(Ytr, one_vs_all_targets(ytr, int(ytr.max()) + 1))
    _, err, _ = sp.loo_scores(alphas)
    best = choose(alphas, None, err)
    return best, sp.coef(alphas[best]), sp.solver


def timed(f, *a):
    t = time.perf_counter()
    out = f(*a)
    return time.perf_counter() - t, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="2000 x 1000 features")
    p.add_argument("--sizes", default="19363,3000", help="training sizes")
    p.add_argument("--m", type=int, default=4000, help="features (OPU components)")
    p.add_argument("--n-val", type=int, default=2000)
    p.add_argument("--no-loo", action="store_true", help="skip the leave-one-out comparison")
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.quick:
        sizes, args.m, args.n_val = [2000, 600], 1000, 500
    print(f"15 alphas {GRID[0]:g}..{GRID[-1]:g}, {args.m} features, 10 classes, "
          f"validation {args.n_val}, threads: {os.environ.get('OMP_NUM_THREADS', 'default')}")
    Y, y = make_features(max(sizes) + args.n_val, args.m)
    Yv, yv = Y[-args.n_val:], y[-args.n_val:]
    for n in sizes:
        Ytr, ytr = Y[:n], y[:n]
        t_sk, (i_sk, acc_sk, pred_sk) = timed(run_sklearn, Ytr, ytr, Yv, yv, GRID)
        t, (i, acc, pred, used) = timed(run_ours, Ytr, ytr, Yv, yv, GRID)
        same = (pred == pred_sk).mean() if i == i_sk else "n/a (another alpha of equal accuracy)"
        print(f"holdout n={n}: sklearn refit x15 {t_sk:7.2f} s, ours [{used}] {t:7.2f} s: speed-up "
              f"{t_sk / t:5.2f}x; alpha {GRID[i]:g} (sklearn {GRID[i_sk]:g}), max |acc diff| over the grid "
              f"{np.abs(acc - acc_sk).max():.4f}, same predictions: {same}", flush=True)
        if args.no_loo:
            continue
        from kernels.selection import alpha_scale, relative_alphas
        from kernels.ridge import NormalEquations, one_vs_all_targets

        grid = relative_alphas(alpha_scale(NormalEquations().update(Ytr, one_vs_all_targets(ytr, 10))))
        t_sk, sk = timed(run_sklearn_loo, Ytr, ytr, grid)
        t, (i, (W, b), used) = timed(run_ours_loo, Ytr, ytr, grid)
        pred, pred_sk = np.argmax(Yv.astype(np.float64) @ W + b, 1), sk.predict(Yv)
        print(f"LOO     n={n}: sklearn RidgeClassifierCV {t_sk:7.2f} s, ours [{used}] {t:7.2f} s: speed-up "
              f"{t_sk / t:5.2f}x; alpha {grid[i]:.4g} (sklearn {sk.alpha_:.4g}), same predictions: "
              f"{(pred == pred_sk).mean():.4f}", flush=True)


if __name__ == "__main__":
    main()
