"""Ridge solvers, pure functions: (G + alpha I) W = B for a grid of alphas, G (k, k) symmetric, B (k, t).

k = features of the ridge problem (the projected components), t = targets. scikit-learn's
linear_model/_ridge.py is the model: small `_solve_*` functions, a pure `resolve_solver` that says
what "auto" means, an explicit fallback (Cholesky -> eigh), and the solver that ran returned with
the answer. kernels/ridge.py (NormalEquations.solve_path) and kernels/loo.py call these; NumPy
arrays run on torch's LAPACK (scipy without torch), CuPy arrays on cuSOLVER.
"""
from __future__ import annotations

import numpy as np

from kernels.xp import check_finite, get_array_module

SOLVERS = ("auto", "cholesky", "eigh")
# eigh (syevd with vectors) costs about this many Cholesky solves of the same size: measured on
# this 2-core machine (torch/MKL, float64) 7.3x at k=2000 and 14.7x at k=4000 (6.9 s vs 0.47 s),
# rising with k as its tridiagonalization is memory-bound BLAS2 while potrf is BLAS3. Only the
# "auto" choice depends on it: a grid of more alphas than this pays for one eigh.
EIGH_COST_IN_CHOLESKY = 15.0


def check_alphas(alphas):
    """alphas -> 1-D float64 array; ValueError unless every alpha is finite and > 0."""
    a = np.atleast_1d(np.asarray(alphas, dtype=np.float64))
    if a.ndim != 1 or a.size == 0 or not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError(f"alphas must be finite and > 0, got {list(np.atleast_1d(alphas))}")
    return a


def resolve_solver(solver: str, n_alphas: int) -> str:
    """What "auto" means (pure): Cholesky per alpha unless the grid pays for one eigh."""
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; expected one of {SOLVERS}")
    if solver != "auto":
        return solver
    return "eigh" if n_alphas > EIGH_COST_IN_CHOLESKY else "cholesky"


def _scipy_linalg(xp):
    if xp is np:
        import scipy.linalg

        return scipy.linalg
    import cupyx.scipy.linalg

    return cupyx.scipy.linalg


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _chol_solve(L, B):
    """L Lᵀ X = B by two triangular solves (torch.cholesky_solve is ~5x slower here for few RHS)."""
    torch = _torch()
    return torch.linalg.solve_triangular(L.mT, torch.linalg.solve_triangular(L, B, upper=False), upper=True)


def _solve_cholesky_mixed(G, B, alpha, max_iter: int = 10, g_norm: float | None = None, G32=None):
    """float32 Cholesky + float64 iterative refinement (LAPACK dsposv's strategy) -> W or None.

    The factorization, the O(k^3) part, runs in float32 (~2x faster); residuals are float64, so
    the answer has float64 accuracy whenever cond(G + alpha I) * 2^-24 << 1. None when the
    refinement does not converge (or float32 cannot factor): the caller then uses float64.
    """
    torch = _torch()
    if torch is None:
        return None
    Gt, Bt = torch.from_numpy(G), torch.from_numpy(B)
    if G32 is None:
        A32 = Gt.to(torch.float32)
        A32.diagonal().add_(alpha)
    else:  # a path converts G once and only resets its diagonal per alpha (no k x k copy)
        A32 = G32
        A32.diagonal().copy_(Gt.diagonal().add(alpha))
    L, info = torch.linalg.cholesky_ex(A32)
    if int(info) != 0:
        return None
    W = _chol_solve(L, Bt.to(torch.float32)).double()
    # dsposv's stopping rule: ||r||inf <= ||W||inf * ||A||inf * eps64 * sqrt(k)
    if g_norm is None:
        g_norm = Gt.abs().sum(1).max().item()
    tol = (g_norm + alpha) * np.finfo(np.float64).eps * np.sqrt(G.shape[0])
    for _ in range(max_iter):
        R = Bt - torch.addmm(W, Gt, W, beta=alpha)  # B - (G + alpha I) W
        if R.abs().max().item() <= tol * W.abs().max().item():
            return W.numpy()
        W += _chol_solve(L, R.to(torch.float32)).double()
    return None


def _solve_cholesky(G, B, alpha):
    """float64 Cholesky: W (k, t); raises LinAlgError when G + alpha I is not positive definite."""
    xp = get_array_module(G)
    if xp is np:
        torch = _torch()
        if torch is not None:
            # torch's LAPACK (MKL potrf) factors k=4000 ~4.6x faster than OpenBLAS's here.
            A = torch.from_numpy(G).clone()
            A.diagonal().add_(alpha)
            L, info = torch.linalg.cholesky_ex(A)
            if int(info) != 0:
                raise np.linalg.LinAlgError(f"G + alpha I not positive definite (leading minor {int(info)})")
            return _chol_solve(L, torch.from_numpy(B)).numpy()
        import scipy.linalg

        A = G + alpha * np.eye(G.shape[0])
        return scipy.linalg.cho_solve(scipy.linalg.cho_factor(A, lower=True, check_finite=False), B,
                                      check_finite=False)
    import cupyx

    A = G + alpha * xp.eye(G.shape[0], dtype=G.dtype)
    la = _scipy_linalg(xp)
    # cupy.linalg.cholesky returns garbage instead of raising unless told to raise.
    with cupyx.errstate(linalg="raise"):
        L = xp.linalg.cholesky(A)
    return la.solve_triangular(L.T, la.solve_triangular(L, B, lower=True), lower=False)


def _solve_cholesky_path(G, B, alphas, mixed: bool):
    """One factorization per alpha -> (W (a, k, t), solver_used); raises LinAlgError on failure."""
    xp = get_array_module(G)
    out, n_mixed = [], 0
    torch = _torch() if mixed and xp is np else None
    g_norm = torch.from_numpy(G).abs().sum(1).max().item() if torch is not None else None  # once per path
    G32 = torch.from_numpy(G).to(torch.float32) if torch is not None else None
    for a in alphas:
        W = _solve_cholesky_mixed(G, B, a, g_norm=g_norm, G32=G32) if torch is not None else None
        n_mixed += W is not None
        out.append(W if W is not None else _solve_cholesky(G, B, a))
    tag = "cholesky" if n_mixed == 0 else "cholesky(fp32+refine)" if n_mixed == len(alphas) \
        else f"cholesky(fp32+refine for {n_mixed}/{len(alphas)})"
    return xp.stack(out), tag


def eigh(G, overwrite: bool = False):
    """(eigenvalues (k,), eigenvectors (k, k)) of symmetric G (k, k) float64. overwrite=True: G is
    scratch (the caller owns it).

    LAPACK's MRRR driver (evr) needs O(k) workspace where divide and conquer (evd) needs 2k² more
    (256 MB at k = 4,000); it was ~10 % slower here (8.6 vs 7.7 s at k = 4,000)."""
    xp = get_array_module(G)
    if xp is np:
        import scipy.linalg

        return scipy.linalg.eigh(G, driver="evr", overwrite_a=overwrite, check_finite=False)
    return xp.linalg.eigh(G)


def _solve_eigh_path(G, B, alphas, overwrite: bool = False):
    """One eigendecomposition G = V diag(lam) Vᵀ for every alpha: W(a) = V diag(1/(lam+a)) VᵀB."""
    xp = get_array_module(G)
    lam, V = eigh(G, overwrite)
    VtB = V.T @ B
    return xp.stack([V @ (VtB / (lam + a)[:, None]) for a in alphas])


def solve_ridge_path(G, B, alphas, solver: str = "auto", mixed: bool = True, overwrite: bool = False):
    """W for every alpha -> (W (len(alphas), k, t) float64, solver_used).

    Cholesky first; if a factorization fails (G + alpha I not positive definite: a negative or
    rounding-damaged G), eigh for the whole grid, which needs only symmetry; solver_used says so.
    mixed: Cholesky factors in float32 and refines in float64 (see _solve_cholesky_mixed),
    falling back per alpha to a float64 factorization; solver_used says which ran.
    overwrite: G is scratch and may be destroyed by the eigh path (saves a k x k copy).
    """
    alphas = check_alphas(alphas)
    xp = get_array_module(G)
    G, B = xp.asarray(G, dtype=xp.float64), xp.asarray(B, dtype=xp.float64)
    check_finite(G, "ridge solve (Gram matrix)")
    check_finite(B, "ridge solve (cross term YᵀT)")
    used = resolve_solver(solver, alphas.size)
    if used == "cholesky":
        try:
            return _solve_cholesky_path(G, B, alphas, mixed)
        except np.linalg.LinAlgError:
            used = "eigh (cholesky failed)"
        except Exception as e:  # CuPy raises its own LinAlgError class
            if type(e).__name__ != "LinAlgError":
                raise
            used = "eigh (cholesky failed)"
    return _solve_eigh_path(G, B, alphas, overwrite), used


def solve_dual_path(Yc, Tc, alphas, solver: str = "auto", gemm_dtype: str = "float32", mixed: bool = True):
    """Kernel form for n < k -> (W (a, k, t), "dual/" + solver_used): W(a) = Ycᵀ (K + a I)^{-1} Tc
    with K = Yc Ycᵀ (n, n). Yc (n, k) and Tc (n, t) centered (or raw, without an intercept)."""
    xp = get_array_module(Yc)
    Yg = Yc.astype(xp.float32) if gemm_dtype == "float32" else Yc
    K = (Yg @ Yg.T).astype(xp.float64)  # centered, so float32 is accurate (see kernels/ridge.py)
    Z, used = solve_ridge_path(K, Tc, alphas, solver, mixed, overwrite=True)  # K is ours
    a, n, t = Z.shape
    # one pass over Yc for every alpha: (k, n) @ (n, a*t) instead of a GEMMs with t columns
    W = Yc.T @ Z.transpose(1, 0, 2).reshape(n, a * t)
    return W.reshape(-1, a, t).transpose(1, 0, 2), "dual/" + used
