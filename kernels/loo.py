"""Exact leave-one-out ridge for every alpha from one eigendecomposition (no refits).

Leave-one-out is closed form for a linear smoother with an unpenalized intercept: with the hat
matrix H = 11ᵀ/n + Yc (YcᵀYc + αI)⁻¹ Ycᵀ, the score of row i fitted without row i is
ŝ₋ᵢ = (ŝᵢ − hᵢᵢ tᵢ) / (1 − hᵢᵢ). From K = Yc Ycᵀ = U diag(μ) Uᵀ (n ≤ k, "dual") or
G = YcᵀYc = V diag(λ) Vᵀ (n > k, "primal", P = Yc V) every alpha costs one GEMM with t columns.
Used by kernels/selection.py (and engine/ridge_training.py), checked against brute-force refits
and scikit-learn's RidgeClassifierCV in tests/kernels/test_selection.py.
"""
from __future__ import annotations

import numpy as np

from kernels.solvers import check_alphas, eigh
from kernels.xp import get_array_module


class SpectralRidge:
    """One eigendecomposition of a small ridge problem, for every alpha: LOO scores and coefficients.

    Y (n, k) features, T (n, t) targets, both in memory. n <= k: eigh of K = YcYcᵀ (n, n);
    n > k: eigh of G = YcᵀYc (k, k) and P = Yc V, computed in row chunks of `chunk`.
    gemm_dtype="float32" forms K or G from centered float32 rows (see kernels/ridge.py).
    """

    def __init__(self, Y, T, fit_intercept: bool = True, gemm_dtype: str = "float32", chunk: int = 4096):
        xp = get_array_module(Y)
        self.xp, self.chunk = xp, chunk
        Y = xp.asarray(Y)
        T = xp.asarray(T, dtype=xp.float64)
        n, k = Y.shape
        self.n, self.k, self.fit_intercept = n, k, fit_intercept
        self.mean_y = Y.mean(0, dtype=xp.float64) if fit_intercept else xp.zeros(k)
        self.mean_t = T.mean(0) if fit_intercept else xp.zeros(T.shape[1])
        gd = xp.float32 if gemm_dtype == "float32" and Y.dtype != xp.float64 else xp.float64
        self.Yc = (Y.astype(xp.float64) - self.mean_y).astype(gd)
        self.Tc = T - self.mean_t
        self.T = T
        self.dual = n <= k
        # Rounding Yc to float32 leaves a residual mean r: the centering direction 1/sqrt(n) must be
        # exactly null (its 1/n cancels in 1 - h), so K is double-centered and G formed from Yc - r.
        self._r = self.Yc.mean(0, dtype=xp.float64) if fit_intercept else xp.zeros(k)
        if self.dual:
            K = (self.Yc @ self.Yc.T).astype(xp.float64)
            if fit_intercept:
                m = K.mean(0)
                K = K - m[:, None] - m[None, :] + m.mean()
            mu, self.U = eigh((K + K.T) / 2, overwrite=True)
            # Eigenvalues below the rounding noise of the GEMM that formed K are zeros. U stays
            # orthonormal, so h = 1/n + Σ U²μ/(μ+α) < 1 whatever that noise did to μ.
            eps = float(np.finfo(np.dtype(str(self.Yc.dtype))).eps) * max(n, k)
            self.eig = xp.where(mu > eps * float(mu.max()), mu, 0.0)
            self.UtT = self.U.T @ self.Tc
        else:
            # P = Yc V has no such guarantee: Σᵢ Pᵢⱼ² = λⱼ must hold to the precision of the small
            # λ, so G is summed in float64 (products of float32 values are exact there).
            G = xp.zeros((k, k))
            for Yb in self._centered_chunks():
                G += Yb.T @ Yb
            lam, self.V = eigh((G + G.T) / 2, overwrite=True)
            self.eig = xp.maximum(lam, 0.0)
            self.VtB = self.V.T @ (self.Yc.T.astype(xp.float64) @ self.Tc)  # rᵀ1ᵀTc = 0: Tc is centered
        self.solver = "loo-eigh(dual)" if self.dual else "loo-eigh(primal)"

    def _centered_chunks(self):
        for r in range(0, self.n, self.chunk):
            yield self.Yc[r:r + self.chunk].astype(self.xp.float64) - self._r

    def _loo(self, S, omh, T):
        """LOO scores from fitted centered scores S and 1 - h: ŝ₋ᵢ = (ŝᵢ − hᵢᵢ tᵢ) / (1 − hᵢᵢ)."""
        xp = self.xp
        omh = xp.maximum(omh, 1e-12)  # h -> 1 only through rounding in degenerate problems
        return (S + self.mean_t - (1.0 - omh)[:, None] * T) / omh[:, None]

    def _primal_blocks(self, alphas):
        """Per row chunk: (slice, [(LOO scores, 1 - h) for each alpha]); P = Yc V once per chunk."""
        h0 = 1.0 / self.n if self.fit_intercept else 0.0
        inv = [1.0 / (self.eig + float(a)) for a in alphas]
        C = [self.VtB * i[:, None] for i in inv]
        for j, Yb in enumerate(self._centered_chunks()):
            sl = slice(j * self.chunk, j * self.chunk + len(Yb))
            P = Yb @ self.V
            P2 = P * P
            out = []
            for i, c in zip(inv, C):
                omh = 1.0 - h0 - P2 @ i
                out.append((self._loo(P @ c, omh, self.T[sl]), omh))
            yield sl, out

    def loo_predictions(self, alpha: float):
        """(n, t) scores of each row by the model fitted without it, and (n,) 1 - h_ii."""
        xp, a = self.xp, float(alpha)
        h0 = 1.0 / self.n if self.fit_intercept else 0.0
        if self.dual:
            f = self.eig / (self.eig + a)
            S = self.U @ (f[:, None] * self.UtT)  # fitted centered scores
            # 1 - h from the complement α/(μ+α): no cancellation when h is close to 1 (small α)
            omh = (self.U * self.U) @ (a / (self.eig + a)) - h0
            return self._loo(S, omh, self.T), omh
        S, omh = xp.empty_like(self.T), xp.empty(self.n)
        for sl, [(s, o)] in self._primal_blocks([a]):
            S[sl], omh[sl] = s, o
        return S, omh

    def loo_scores(self, alphas, labels=None, mask=None):
        """(accuracy (a,) or None, squared error (a,), n scored) of leave-one-out predictions.

        labels: (n,) class indices (accuracy = argmax of the LOO scores); mask: rows to score
        (e.g. all but the single image of a class, which LOO cannot predict)."""
        xp = self.xp
        alphas = check_alphas(alphas)
        mask = xp.ones(self.n, dtype=bool) if mask is None else xp.asarray(mask)
        labels = None if labels is None else xp.asarray(labels)
        right, err = np.zeros(len(alphas)), np.zeros(len(alphas))

        def add(i, S, sl):
            m = mask[sl]
            err[i] += float(((S[m] - self.T[sl][m]) ** 2).sum())
            if labels is not None:
                right[i] += float((xp.argmax(S[m], axis=1) == labels[sl][m]).sum())

        if self.dual:
            for i, a in enumerate(alphas):
                add(i, self.loo_predictions(a)[0], slice(None))
        else:
            for sl, out in self._primal_blocks(alphas):
                for i, (S, _) in enumerate(out):
                    add(i, S, sl)
        n = int(mask.sum())
        return (right / max(n, 1) if labels is not None else None), err, n

    def coef(self, alpha: float):
        """(W (k, t), intercept (t,)) of the model fitted on every row at `alpha`."""
        a = float(alpha)
        if self.dual:
            Z = self.U @ (self.UtT / (self.eig + a)[:, None])  # (K + αI)⁻¹ Tc
            if self.fit_intercept:
                Z -= Z.mean(0)  # centered in exact arithmetic already; keeps W on the centered rows
            W = self.Yc.T.astype(self.xp.float64) @ Z
        else:
            W = self.V @ (self.VtB / (self.eig + a)[:, None])
        return W, self.mean_t - self.mean_y @ W
