"""Choosing ridge's alpha without wasting rows: exact leave-one-out, K-fold from statistics, holdout.

    alphas = relative_alphas(alpha_scale(ne))        # a grid that fits any feature scale
    loo = SpectralRidge(Y, T)                         # kernels/loo.py: exact LOO for every alpha
    acc, err, _ = loo.loo_scores(alphas, labels)
    err = kfold_squared_error(folded, alphas)         # K-fold from per-fold normal equations
    sel = search(score, alphas, widen=True, ...)      # best alpha, the grid widened past an edge

K-fold needs no rows at all: each fold's NormalEquations are kept apart (rows assigned by a seeded
hash of their position in the stream); fold f is solved from the sum of the others and scored by
its own statistics (NormalEquations.squared_error), so the pass over the data stays one pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from kernels.xp import get_array_module, to_host
from kernels.loo import SpectralRidge  # noqa: F401  (re-exported: part of selection's API)
from kernels.ridge import NormalEquations, concat_rows
from kernels.solvers import check_alphas

METHODS = ("auto", "loo", "kfold", "holdout")
# Default grid: 3 alphas a decade from 1e-6 to 1e2 times tr(G)/k, the mean eigenvalue of G.
GRID_DECADES = (-6.0, 2.0)
GRID_PER_DECADE = 3
WIDEN_DECADES = 2.0  # a best alpha on the grid's edge extends the grid by this much, twice at most
WIDEN_TIMES = 2


class SelectionError(ValueError):
    """Alpha selection cannot run on this data (too few rows for the folds, no signal, ...)."""


def relative_alphas(scale: float, decades=GRID_DECADES, per_decade: int = GRID_PER_DECADE) -> np.ndarray:
    """scale * 10**linspace(lo, hi): log-spaced, `per_decade` values a decade, both ends included."""
    if not (np.isfinite(scale) and scale > 0):
        raise SelectionError(f"the features have no variance (tr(G)/k = {scale}); every training row "
                             "projects to the same vector - check the encoder and the projection")
    lo, hi = decades
    return scale * 10.0 ** np.linspace(lo, hi, int(round((hi - lo) * per_decade)) + 1)


def alpha_scale(stats, fit_intercept: bool = True) -> float:
    """tr(G)/k, the mean eigenvalue of the (centered) Gram: the natural unit of alpha.

    stats: NormalEquations or FoldedNormalEquations; kept raw rows are summed in chunks (no Gram)."""
    rows = stats.rows
    if rows is not None:
        Y = rows[0]
        xp = get_array_module(Y)
        mean = Y.mean(0, dtype=xp.float64) if fit_intercept else xp.zeros(Y.shape[1])
        ss = sum(float(((Y[r:r + 4096].astype(xp.float64) - mean) ** 2).sum()) for r in range(0, len(Y), 4096))
        return ss / Y.shape[1]
    ne = stats.total() if isinstance(stats, FoldedNormalEquations) else stats
    G, _ = ne.gram(fit_intercept)
    xp = get_array_module(G)
    return float(xp.trace(G)) / G.shape[0]


def choose(alphas, accuracy, squared_error, rtol: float = 1e-6) -> int:
    """Index of the best alpha: highest accuracy (when given), ties broken by the lowest squared
    error; errors within rtol of that lowest one are ties too (below the smallest eigenvalue the
    solutions stop changing and the errors differ only by rounding), and go to the larger alpha.
    Never by size alone while the error can tell."""
    alphas = np.asarray(alphas, dtype=np.float64)
    err = np.asarray(squared_error, dtype=np.float64)
    acc = np.zeros_like(err) if accuracy is None else np.asarray(accuracy, dtype=np.float64)
    best = np.flatnonzero(acc == acc.max())
    low = err[best].min()
    tied = best[err[best] <= low + rtol * abs(low)]
    return int(tied[np.argmax(alphas[tied])])


# ----------------------------------------------------------------------------- K-fold
def fold_of(index, n_folds: int, seed: int):
    """Fold of each global row index: a SplitMix64 hash of (seed, index) mod n_folds."""
    with np.errstate(over="ignore"):
        z = np.asarray(index, dtype=np.uint64) + np.uint64((int(seed) * 0x9E3779B97F4A7C15) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z % np.uint64(n_folds)).astype(np.int64)


class FoldedNormalEquations:
    """NormalEquations kept per fold, plus the raw rows while they fit in `keep_raw_bytes`.

    update(Y, T) as NormalEquations. While rows are kept (small data), nothing is split yet and
    leave-one-out or the dual solve can use them; past the budget they are folded into the per-fold
    statistics and only K-fold remains. total() is the sum over folds (one pass, every row).
    """

    def __init__(self, n_folds: int = 5, seed: int = 0, keep_raw_bytes: int = 0, keep_raw_rows: int | None = None,
                 gemm_dtype: str = "float32", dual_only: bool = False):
        if int(n_folds) < 1:
            raise SelectionError(f"the number of folds must be >= 1, got {n_folds}")
        self.n_folds, self.seed, self.keep_raw_bytes = int(n_folds), int(seed), int(keep_raw_bytes)
        self.keep_raw_rows = keep_raw_rows
        self.dual_only = dual_only  # keep rows only while n <= k (for the dual solve), not for LOO
        self.gemm_dtype = gemm_dtype
        self.n = 0
        self._raw: list | None = []
        self._raw_bytes = 0
        self._folds: list[NormalEquations] | None = None
        self._total = None  # (keep_raw_rows, NormalEquations): total() is asked for more than once

    def update(self, Y, T):
        xp = get_array_module(Y)
        T = xp.asarray(T, dtype=xp.float64)
        self._total = None
        fits = self._raw_bytes + Y.nbytes + T.nbytes <= self.keep_raw_bytes and \
            (self.keep_raw_rows is None or self.n + len(Y) <= self.keep_raw_rows) and \
            (not self.dual_only or self.n + len(Y) <= Y.shape[1])
        if self._raw is not None and fits:
            self._raw.append((Y, T))
            self._raw_bytes += Y.nbytes + T.nbytes
            self.n += len(Y)
            return self
        self._split_raw()
        self._add(Y, T, self.n)
        self.n += len(Y)
        return self

    def _add(self, Y, T, start: int):
        if self._folds is None:
            self._folds = [NormalEquations(gemm_dtype=self.gemm_dtype) for _ in range(self.n_folds)]
        f = fold_of(np.arange(start, start + len(Y)), self.n_folds, self.seed)
        if self.n_folds == 1:
            self._folds[0].update(Y, T)
            return
        xp = get_array_module(Y)
        fd = xp.asarray(f)
        for j in range(self.n_folds):
            sel = fd == j
            if bool(sel.any()):
                self._folds[j].update(Y[sel], T[sel])

    def _add_raw(self, raw):
        start = 0
        for Y, T in raw or ():
            self._add(Y, T, start)
            start += len(Y)

    def _split_raw(self):
        raw, self._raw = self._raw, None
        self._add_raw(raw)

    @property
    def rows(self):
        """(Y, T) when every row is still kept, else None."""
        return concat_rows(self._raw)

    def folds(self) -> list[NormalEquations]:
        """Per-fold statistics (built from the kept rows on first use)."""
        if self._folds is None:
            if not self._raw:
                raise SelectionError("no training rows")
            self._add_raw(self._raw)
        return self._folds

    def total(self, keep_raw_rows: int = 0) -> NormalEquations:
        """The statistics of every row (raw rows stay raw up to keep_raw_rows, for the dual).
        Computed once and kept: treat it as read-only (merge it into a new NormalEquations)."""
        if self._total is not None and self._total[0] == keep_raw_rows:
            return self._total[1]
        if self._raw is not None:
            out = NormalEquations(keep_raw=keep_raw_rows, gemm_dtype=self.gemm_dtype)
            for Y, T in self._raw:
                out.update(Y, T)
        elif len(self._folds) == 1:
            out = self._folds[0]  # nothing to sum (holdout, or LOO past its budget)
        else:
            out = NormalEquations(gemm_dtype=self.gemm_dtype)
            for ne in self._folds:
                out.merge(ne)
        self._total = (keep_raw_rows, out)
        return out


def kfold_squared_error(folded: FoldedNormalEquations, alphas, fit_intercept: bool = True,
                        solver: str = "auto"):
    """(squared error summed over held-out folds (a,), rows scored, solver used) for every alpha."""
    folds = [f for f in folded.folds() if f.n]
    if folded.n < folded.n_folds or len(folds) < 2:
        raise SelectionError(f"K-fold with {folded.n_folds} folds needs at least {folded.n_folds} training rows "
                             f"spread over 2 or more folds, got {folded.n} rows in {len(folds)} fold(s); "
                             "use --select loo (exact leave-one-out) or fewer --folds")
    alphas = check_alphas(alphas)
    err, used = np.zeros(len(alphas)), None
    for j, held in enumerate(folds):
        rest = NormalEquations(gemm_dtype=folded.gemm_dtype)
        for i, f in enumerate(folds):
            if i != j:
                rest.merge(f)
        path = rest.solve_path(alphas, fit_intercept=fit_intercept, solver=solver)
        used = path.solver
        err += [held.squared_error(*path[i]) for i in range(len(alphas))]
    return err, sum(f.n for f in folds), f"kfold({len(folds)})/{used}"


# ----------------------------------------------------------------------------- the whole choice
@dataclass
class Selection:
    """How alpha was chosen: method, grid, the scores on it, the index of the best."""

    method: str
    alphas: np.ndarray
    accuracy: np.ndarray | None
    squared_error: np.ndarray
    best: int
    n_scored: int
    solver: str
    warnings: list = field(default_factory=list)

    @property
    def alpha(self) -> float:
        return float(self.alphas[self.best])

    def to_dict(self) -> dict:
        acc = None if self.accuracy is None else [round(float(v), 6) for v in self.accuracy]
        n = max(self.n_scored, 1)
        return {"method": self.method, "alpha": self.alpha, "alphas": [float(a) for a in self.alphas],
                "accuracy": acc, "mean_squared_error": [float(e) / n for e in self.squared_error],
                "n_scored": self.n_scored, "solver": self.solver, "warnings": list(self.warnings)}


def search(score, alphas, widen: bool, method: str, solver: str = "") -> Selection:
    """Score the grid; while the best sits on an edge of a relative grid, extend it past that edge.

    score(alphas) -> (accuracy or None, squared error, n scored, solver used) for those alphas.
    """
    alphas = np.asarray(check_alphas(alphas))
    acc, err, n, solver = score(alphas)
    step = 10.0 ** (1.0 / GRID_PER_DECADE)
    n_new = int(round(WIDEN_DECADES * GRID_PER_DECADE))
    for _ in range(WIDEN_TIMES if widen else 0):
        best = choose(alphas, acc, err)
        if 0 < best < len(alphas) - 1:
            break
        side = -1 if best == 0 else 1
        edge = alphas[0] if side < 0 else alphas[-1]
        new = np.sort(edge * step ** (side * np.arange(1, n_new + 1)))
        a2, e2, _, _ = score(new)
        if side < 0:
            alphas, err = np.concatenate([new, alphas]), np.concatenate([e2, err])
            acc = None if acc is None else np.concatenate([a2, acc])
        else:
            alphas, err = np.concatenate([alphas, new]), np.concatenate([err, e2])
            acc = None if acc is None else np.concatenate([acc, a2])
    best = choose(alphas, acc, err)
    warnings = []
    if len(alphas) > 1 and best in (0, len(alphas) - 1):
        side = "smallest" if best == 0 else "largest"
        warnings.append(f"the chosen alpha {alphas[best]:.4g} is the {side} of the grid "
                        f"({alphas[0]:.3g}..{alphas[-1]:.3g}); the best may lie beyond it - "
                        + ("the grid was widened as far as allowed" if widen else "widen --alphas"))
    return Selection(method, alphas, acc, err, best, n, solver, warnings)


def loo_mask(labels, n_classes: int):
    """(rows LOO can score, names of classes with a single row): a lone row's class is absent
    from the model fitted without it, so its LOO prediction says nothing."""
    counts = np.bincount(to_host(labels), minlength=n_classes)
    lone = np.flatnonzero(counts == 1)
    return ~np.isin(to_host(labels), lone), lone


def resolve_method(method: str, has_validation: bool, rows_kept: bool) -> str:
    """What "auto" means: a holdout when validation data was given, else exact LOO while the rows
    fit in memory, else K-fold from statistics."""
    if method not in METHODS:
        raise SelectionError(f"unknown selection method {method!r}; expected one of {', '.join(METHODS)}")
    if method != "auto":
        return method
    if has_validation:
        return "holdout"
    return "loo" if rows_kept else "kfold"


__all__ = ["METHODS", "SelectionError", "relative_alphas", "alpha_scale", "choose", "SpectralRidge",
           "fold_of", "FoldedNormalEquations", "kfold_squared_error", "Selection", "search", "loo_mask",
           "resolve_method"]
