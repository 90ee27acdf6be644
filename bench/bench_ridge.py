"""Alpha grid: streamed normal equations + one solve path vs refitting sklearn's RidgeClassifier.

Features are realistic OPU outputs: noisy copies of per-class binary prototypes projected by
SimulatedOPU (exponential-like, non-negative). Both methods see the same float32 features, pick
alpha by validation accuracy (ties -> larger alpha) and are compared on their predictions.
Usage: python bench/bench_ridge.py [--quick] [--sizes 19363,3000] [--solvers cholesky,eigh]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kernels.projection import SimulatedOPU  # noqa: E402
from kernels.ridge import NormalEquations, one_vs_all_targets, select_alpha  # noqa: E402

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


def run_ours(Ytr, ytr, Yv, yv, alphas, n_classes, solver, batch=4096):
    n, k = Ytr.shape
    ne = NormalEquations(keep_raw=n if n < k else 0)  # n < k: dual form, no k x k Gram
    T = one_vs_all_targets(ytr, n_classes)
    for i in range(0, n, batch):  # as TransferClassifier streams it (accumulate_rows)
        ne.update(Ytr[i:i + batch], T[i:i + batch])
    path = ne.solve_path(alphas, solver=solver)
    best, accs = select_alpha(path, Yv, yv)
    W, b = path[best]
    return best, accs, np.argmax(Yv.astype(np.float64) @ W + b, axis=1), path.solver


def timed(f, *a):
    t = time.perf_counter()
    out = f(*a)
    return time.perf_counter() - t, out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="2000 x 1000 features, 3 solvers")
    p.add_argument("--sizes", default="19363,3000", help="training sizes")
    p.add_argument("--m", type=int, default=4000, help="features (OPU components)")
    p.add_argument("--n-val", type=int, default=2000)
    p.add_argument("--solvers", default="cholesky,eigh")
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
        print(f"n={n}: sklearn refit x15 {t_sk:7.2f} s  best alpha {GRID[i_sk]:g} "
              f"val acc {acc_sk[i_sk]:.4f}")
        for solver in args.solvers.split(","):
            t, (i, acc, pred, used) = timed(run_ours, Ytr, ytr, Yv, yv, GRID, 10, solver)
            print(f"n={n}: ours[{used:>14}] {t:7.2f} s  speedup {t_sk / t:5.2f}x  best alpha "
                  f"{GRID[i]:g} (sklearn {GRID[i_sk]:g})  max |acc diff| over grid "
                  f"{np.abs(acc - acc_sk).max():.4f}  same predictions at sklearn's alpha: "
                  f"{(pred == pred_sk).mean() if i == i_sk else 'n/a'}")


if __name__ == "__main__":
    main()
