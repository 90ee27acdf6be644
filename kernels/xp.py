"""The array module: one body of numerics for NumPy and CuPy (cupy is imported only if already loaded)."""
from __future__ import annotations


def get_array_module(*arrays):
    """Return cupy when any argument is a CuPy array, else numpy (cupy is imported only if loaded)."""
    import sys

    cupy = sys.modules.get("cupy")
    if cupy is not None:
        return cupy.get_array_module(*arrays)
    import numpy

    return numpy


def to_host(a):
    """A NumPy array from a NumPy or CuPy array (a device-to-host copy for CuPy)."""
    import numpy

    return a.get() if hasattr(a, "get") and not isinstance(a, numpy.ndarray) else numpy.asarray(a)


def check_finite(x, stage: str):
    """Raise ValueError naming `stage` when array `x` holds NaN or Inf; return x unchanged.

    One reduction over x (cheap next to the GEMMs it guards); works for NumPy and CuPy arrays.
    """
    xp = get_array_module(x)
    x = xp.asarray(x)
    if x.dtype.kind in "fc" and not bool(xp.isfinite(x).all()):
        n_nan, n_inf = int(xp.isnan(x).sum()), int(xp.isinf(x).sum())
        raise ValueError(f"{stage}: found {n_nan} NaN and {n_inf} Inf values in an array of shape "
                         f"{tuple(x.shape)}; fix the upstream stage (check inputs, precision and scales)")
    return x
