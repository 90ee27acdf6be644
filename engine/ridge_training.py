"""The classifier's ridge training: streamed statistics, the choice of alpha, the final solve.

TransferClassifier.fit_stream feeds projected rows here (add, add_validation), then calls
select() and final_solve(alpha). The policy (what "auto" means, which rows are kept and for what)
lives here; the numerics live in kernels/ridge.py, kernels/selection.py and kernels/loo.py.

Rows kept raw: for exact LOO, up to the classifier's loo_max_rows and loo_max_bytes (or a quarter
of free RAM); with validation data, only while n <= k (the dual solve), so a holdout fit streams
in O(k²) memory whatever n is. Per-fold statistics only where K-fold may run.
"""
from __future__ import annotations

import contextlib
import warnings

import numpy as np

from kernels.xp import get_array_module

SELECT_METHODS = ("auto", "loo", "kfold", "holdout")


class SelectionWarning(UserWarning):
    """Alpha selection ran, but part of the data could not be scored (e.g. a class with one image)."""


def raw_budget(max_bytes: int) -> int:
    """Bytes of training rows that may be kept: max_bytes or a quarter of free RAM."""
    try:
        import psutil

        free = int(psutil.virtual_memory().available)
    except ImportError:
        free = 8 << 30
    return int(min(max_bytes, free // 4))


def _available_ram() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def _largest_k(trainer, avail: int) -> int:
    """The largest k whose ridge estimate fits in `avail` bytes (the estimate grows with k)."""
    from kernels.ridge import ridge_memory_bytes

    lo, hi = 1, 1 << 24
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ridge_memory_bytes(mid, trainer.nc, trainer.n_grams) <= avail else (lo, mid - 1)
    return lo


class RidgeTrainer:
    def __init__(self, clf, has_validation: bool):
        from kernels.selection import FoldedNormalEquations, SelectionError

        self.clf, self.nc = clf, len(clf.classes_)
        self.grid = clf._grid_or_none()
        if clf.select not in SELECT_METHODS:
            raise SelectionError(f"unknown --select {clf.select!r}; expected one of {', '.join(SELECT_METHODS)}")
        if clf.select == "holdout" and not has_validation and len(self.grid if self.grid is not None else ()) != 1:
            raise SelectionError("--select holdout needs validation data: a validation/ folder or "
                                 "--validation-fraction F; --select loo or kfold use the training rows instead")
        self.holdout = has_validation and clf.select in ("auto", "holdout")
        folds = clf.folds if clf.select == "kfold" or (clf.select == "auto" and not has_validation) else 1
        self.train = FoldedNormalEquations(folds, clf.seed, keep_raw_bytes=raw_budget(clf.loo_max_bytes),
                                           keep_raw_rows=None if clf.select == "loo" else clf.loo_max_rows,
                                           dual_only=self.holdout)
        self.labels, self.val_rows, self.val_labels = [], [], []
        self.val_ne = self.spectral = None
        self.n_grams = folds + 1 + (2 if has_validation else 0)  # per fold, total; validation's, the merge
        if clf.projection != "none":  # k is known before any row: refuse before any work
            self.check_memory(int(clf.n_components))
        self._models = {}  # alpha -> (W, b, solver) solved on train while selecting by holdout

    def check_memory(self, k: int) -> None:
        """MemoryError, with the estimate, when the k x k statistics and solves of a fit on k features
        do not fit in the free memory (the projection matrix, once drawn, is already not free)."""
        from kernels.ridge import ridge_memory_bytes

        need, avail = ridge_memory_bytes(k, self.nc, self.n_grams), _available_ram()
        if avail is not None and need > avail:
            sim = self.clf.projection != "none"
            raise MemoryError(f"ridge on k = {k} {'optical components' if sim else 'features'} needs about "
                              f"{need / 2**30:.1f} GiB ({self.n_grams} k x k float64 statistics, the Cholesky "
                              f"factor and the solve), more than the {avail / 2**30:.1f} GiB free; "
                              + (f"use fewer --n-components (at most about {_largest_k(self, avail):,} here)" if sim else
                                 "pool the cut (--pool) or project (--projection sim --n-components K)"))

    # -- streaming --
    def add(self, Y, y):
        from kernels.ridge import one_vs_all_targets

        if not self.labels:  # again with k known, now that the projection matrix holds its memory
            self.check_memory(int(Y.shape[1]))
        self.train.update(Y, one_vs_all_targets(y, self.nc))
        self.labels.append(y)

    def add_validation(self, Y, y):
        from kernels.ridge import NormalEquations, one_vs_all_targets

        if self.val_ne is None:
            self.val_ne = NormalEquations(keep_raw=self.clf.loo_max_rows or 0)
        self.val_rows.append(Y)
        self.val_labels.append(y)
        self.val_ne.update(Y, one_vs_all_targets(y, self.nc))

    @property
    def n_validation(self) -> int:
        return sum(len(y) for y in self.val_labels)

    @property
    def n_final(self) -> int:
        return self.train.n + (self.n_validation if self.clf.refit_validation else 0)

    # -- selection --
    def select(self):
        """The Selection (kernels/selection.py), or None when the grid has a single alpha."""
        if self.grid is not None and len(self.grid) == 1:
            return None
        with self._bar("ridge: choose alpha"):
            return self._select()

    @contextlib.contextmanager
    def _bar(self, desc: str):
        """A one-step bar on stderr around a solve that can take minutes at large k (the classifier's
        `progress`, set by engine/train.py from --quiet; None: when stderr is a terminal)."""
        from kernels.progress import progress_bar

        with progress_bar(getattr(self.clf, "progress", None), total=1, desc=desc, unit="step") as bar:
            yield
            bar.update(1)

    def _select(self):
        from kernels import selection as S

        clf, grid = self.clf, self.grid
        method = S.resolve_method(clf.select, self.n_validation > 0, self.train.rows is not None)
        widen = grid is None
        if grid is None:
            grid = S.relative_alphas(S.alpha_scale(self.train, clf.fit_intercept))
        if method == "holdout":
            if not self.n_validation:
                raise S.SelectionError("--select holdout: the validation split is empty; give validation images "
                                       "or use --select loo or kfold")
            return S.search(self._holdout_scorer(), grid, widen, "holdout")
        if method == "kfold":
            def kfold(alphas):
                err, n, used = S.kfold_squared_error(self.train, alphas, clf.fit_intercept, clf.solver)
                return None, err, n, used

            return S.search(kfold, grid, widen, f"kfold({clf.folds})")
        return self._loo(grid, widen)

    def _loo(self, grid, widen):
        from kernels import selection as S
        from kernels.loo import SpectralRidge

        rows = self.train.rows
        if rows is None:
            raise S.SelectionError(f"--select loo keeps the training rows in memory, but {self.train.n} rows did "
                                   "not fit; use --select kfold")
        xp = get_array_module(self.labels[0])
        labels = xp.concatenate(self.labels)
        self.spectral = sp = SpectralRidge(rows[0], rows[1], self.clf.fit_intercept)
        mask, lone = S.loo_mask(labels, self.nc)
        notes = []
        if len(lone):
            names = [self.clf.classes_[i] for i in lone]
            notes.append(f"leave-one-out is undefined for class(es) {names} with a single training image: "
                         f"their {len(lone)} row(s) are left out of the LOO score, but are in the model")
            warnings.warn(notes[-1], SelectionWarning, stacklevel=4)
        if not mask.any():
            raise S.SelectionError("every class has a single training image: leave-one-out cannot score any "
                                   "alpha; give more images or one alpha (--alphas A)")
        mask = xp.asarray(mask)
        sel = S.search(lambda a: (*sp.loo_scores(a, labels, mask), sp.solver), grid, widen, "loo")
        sel.warnings[:0] = notes
        return sel

    def _holdout_scorer(self):
        from kernels.ridge import one_vs_all_targets, predict_scores

        clf = self.clf
        xp = get_array_module(self.val_rows[0])
        Yv, yv = xp.concatenate(self.val_rows).astype(xp.float64), xp.concatenate(self.val_labels)  # once, not per alpha
        Tv = one_vs_all_targets(yv, self.nc)
        ne = self.train.total(keep_raw_rows=clf.loo_max_rows or 0)

        def score(alphas):
            path = ne.solve_path(alphas, fit_intercept=clf.fit_intercept, solver=clf.solver)
            acc, err = [], []
            for a, W, b in zip(path.alphas, path.coefs, path.intercepts):
                self._models[float(a)] = (W, b, path.solver)
                s = predict_scores(Yv, W, b)
                acc.append(float((xp.argmax(s, axis=1) == yv).mean()))
                err.append(float(((s - Tv) ** 2).sum()))
            return np.array(acc), np.array(err), len(yv), path.solver

        return score

    # -- the final model --
    def final_solve(self, alpha: float):
        """(W, intercept, solver) at alpha on every training row (and validation's, when refit)."""
        with self._bar("ridge: solve"):
            return self._final_solve(alpha)

    def _final_solve(self, alpha: float):
        from kernels.ridge import NormalEquations

        clf = self.clf
        if self.spectral is not None:
            W, b = self.spectral.coef(alpha)
            return W, b, self.spectral.solver.replace("loo-", "")
        if self.val_ne is not None and not clf.refit_validation and alpha in self._models:
            return self._models[alpha]  # solved on the same rows while selecting
        ne = self.train.total(keep_raw_rows=clf.loo_max_rows or 0)
        if self.val_ne is not None and clf.refit_validation:  # a new sum: train.total() stays as it is
            ne = NormalEquations(keep_raw=clf.loo_max_rows or 0).merge(ne).merge(self.val_ne)
        path = ne.solve_path([alpha], fit_intercept=clf.fit_intercept, solver="cholesky")
        W, b = path[0]
        return W, b, path.solver

