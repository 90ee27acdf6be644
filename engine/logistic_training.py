"""The classifier's logistic head: the projected rows kept, alpha chosen, the final fit.

TransferClassifier.fit_stream feeds rows here (add, add_validation) when its head is "logistic"
or "auto"; then calls select() and final(). The numerics are kernels/logistic.py's. Unlike the
ridge head, whose state is the (k, k) normal equations whatever n is, this head keeps every
training row (n x k float32, like ridge's exact leave-one-out) within the classifier's
loo_max_rows and loo_max_bytes (or a quarter of free RAM): past that, "auto" drops them (its ridge
head, fed alongside, has every row) and "logistic" is refused.

"auto" scores both heads on the same terms and keeps the better: ridge's held-out accuracy at its
chosen alpha (exact leave-one-out on train, or holdout on the validation rows) against this
head's (K-fold on train, or the same holdout); ties go to ridge. Leave-one-out trains on n - 1
rows where K-fold trains on (K - 1) / K of them, so on train the comparison leans to ridge.

Alpha: K-fold on the training rows (select auto or kfold, without validation data), or holdout
on the validation rows (select auto or holdout, with them); leave-one-out is ridge's exact
shortcut and has no counterpart here.
"""
from __future__ import annotations

import numpy as np

from engine.ridge_training import raw_budget
from kernels.xp import get_array_module

HEADS = ("auto", "ridge", "logistic")


class RowsDoNotFit(Exception):
    """More training rows than the logistic head may keep (the rows kept so far are attached)."""

    def __init__(self, rows, labels, n: int, nbytes: int):
        super().__init__(n, nbytes)
        self.rows, self.labels, self.n, self.nbytes = rows, labels, n, nbytes


def check_head(head: str) -> str:
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {', '.join(HEADS)} (logistic: multinomial "
                         "logistic regression on the rows in memory; ridge: the streamed normal equations)")
    return head


class LogisticTrainer:
    def __init__(self, clf, has_validation: bool):
        from kernels.selection import SelectionError

        self.clf, self.nc = clf, len(clf.classes_)
        if clf.select == "loo":
            raise SelectionError("--select loo is exact leave-one-out, a ridge shortcut: the logistic head "
                                 "selects by kfold (or holdout on validation rows); use --select kfold or --head ridge")
        if clf.select == "holdout" and not has_validation:
            raise SelectionError("--select holdout needs validation data: a validation/ folder or "
                                 "--validation-fraction F; --select kfold uses the training rows instead")
        self.holdout = has_validation and clf.select in ("auto", "holdout")
        self.grid, self.widen = _grid(clf)  # a ridge-only grid is refused before any row is read
        self.max_rows = clf.loo_max_rows
        self.max_bytes = raw_budget(clf.loo_max_bytes)
        self.rows, self.labels, self.val_rows, self.val_labels = [], [], [], []
        self.n = self.nbytes = 0

    def add(self, Y, y):
        """Keep (Y, y); RowsDoNotFit (with the rows kept, this block included) past the budget."""
        self.rows.append(Y)
        self.labels.append(y)
        self.n += len(y)
        self.nbytes += int(Y.nbytes)
        if (self.max_rows is not None and self.n > self.max_rows) or self.nbytes > self.max_bytes:
            raise RowsDoNotFit(self.rows, self.labels, self.n, self.nbytes)

    def add_validation(self, Y, y):
        self.val_rows.append(Y)
        self.val_labels.append(y)

    @property
    def n_validation(self) -> int:
        return sum(len(y) for y in self.val_labels)

    def select(self, progress=None):
        """The Selection (kernels/selection.py), or None for a grid of one alpha; final() follows."""
        from kernels import logistic as L
        from kernels.progress import progress_bar
        from kernels.selection import SelectionError, search

        clf = self.clf
        xp = get_array_module(self.rows[0])
        X = xp.concatenate(self.rows).astype(xp.float32, copy=False)
        y = xp.concatenate(self.labels).astype(xp.int64)
        self.rows = self.labels = None  # the blocks go with the concatenation (unless ridge holds them too)
        grid, widen, fi = self.grid, self.widen, self.clf.fit_intercept
        self._models, self._val = {}, None
        if self.holdout and self.n_validation:  # scored on when selecting, and refit on unless told not to
            self._val = (xp.concatenate(self.val_rows).astype(xp.float32, copy=False),
                         xp.concatenate(self.val_labels).astype(xp.int64))
        with progress_bar(progress, total=1, desc="logistic: choose alpha", unit="step") as bar:
            space = L.RowSpace(X)
            if grid is None:
                grid = np.asarray(L.GRID) * L.scale(space.Z)
            if len(grid) == 1:
                sel = None
            elif self.holdout:
                if not self.n_validation:
                    raise SelectionError("--select holdout: the validation split is empty; give validation images "
                                         "or use --select kfold")
                Xv, yv = self._val
                score = L.holdout_scorer(space.Z, y, space.transform(Xv), yv, self.nc, fi, self._models)
                sel = search(score, grid, widen, "holdout")
            else:
                sel = search(L.kfold_scorer(space.Z, y, self.nc, int(clf.folds), clf.seed, fi), grid, widen,
                             f"kfold({int(clf.folds)})")
            bar.update(1)
        self._X, self._y, self._space, self._grid0 = X, y, space, float(grid[0])
        return sel

    def final(self, sel, progress=None):
        """(W float64 (k, c), b float64 (c,), alpha, solver, n_final): the model at the chosen alpha,
        on every training row (and the validation rows when the classifier refits on them)."""
        from kernels import logistic as L
        from kernels.progress import progress_bar

        clf = self.clf
        X, y, space = self._X, self._y, self._space
        xp = get_array_module(X)
        alpha = sel.alpha if sel is not None else self._grid0
        with progress_bar(progress, total=1, desc="logistic: fit", unit="step") as bar:
            if self._val is not None and clf.refit_validation:
                X, y = xp.concatenate([X, self._val[0]]), xp.concatenate([y, self._val[1]])
                space, start = L.RowSpace(X), (None, None)
            else:
                start = self._models.get(alpha, (None, None))
            A, b, it, converged = L.fit(space.Z, y, self.nc, alpha, *start, fit_intercept=clf.fit_intercept)
            W = space.coef(A)
            bar.update(1)
        solver = f"logistic-lbfgs ({it} iterations{'' if converged else ', not converged'})"
        return W.astype(xp.float64), b.astype(xp.float64), alpha, solver, len(y)


def _grid(clf):
    """(alphas or None for the relative grid, widen): the head's own grid, or the given numbers."""
    if isinstance(clf.alphas, str):
        if clf.alphas == "auto":
            return None, True
        raise ValueError(f"alphas {clf.alphas!r} is a ridge grid; the logistic head takes 'auto' or numbers")
    return np.asarray(clf.alphas_), False
