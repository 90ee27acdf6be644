"""`xp`: one test body for NumPy and CuPy (CuPy's own test convention). The CuPy case carries the
`gpu` marker and skips where CuPy or a CUDA device is missing; NumPy always runs."""
from __future__ import annotations

import functools

import numpy as np
import pytest


@functools.lru_cache(maxsize=1)
def _cupy():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            return None
    except Exception:  # not installed, or no driver/device: CUDA raises its own error types
        return None
    return cupy


@pytest.fixture(params=[pytest.param("numpy"), pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """The array module under test: numpy, or cupy (skipped without CuPy and a CUDA device)."""
    if request.param == "numpy":
        return np
    cupy = _cupy()
    if cupy is None:
        pytest.skip("needs CuPy and a CUDA device")
    return cupy
