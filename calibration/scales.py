"""Scales from amax (the clip value), and per-channel weight quantization.

Conventions (symmetric, zero point 0):
  activation, signed      scale = amax / 127      int8  in [-128, 127]
  activation, unsigned    scale = amax / 255      uint8 in [0, 255]   (tensor min >= 0)
  weight, per out channel scale = max|w_c| / 127  int8  in [-127, 127]
An amax of 0 (an all-zero tensor or channel) uses MIN_AMAX so no scale is 0; positive values are
kept however small (random-init nets can carry activations of 1e-9).

"amax" is NVIDIA's name (pytorch-quantization, TensorRT): the value that maps to 127, beyond
which values clip. The binarization cut of the feature encoders (kernels/encode.py) is another
thing, and keeps the name "threshold".
"""
from __future__ import annotations

import numpy as np

# Floor of an amax: an all-zero tensor gets scale MIN_AMAX / 127, never 0.
MIN_AMAX = 2.0 ** -20


def floor_amax(amax: float) -> float:
    """amax itself when positive and finite, else MIN_AMAX."""
    a = float(amax)
    return a if a > 0.0 and a < float("inf") else MIN_AMAX


def act_scale(amax: float, signed: bool = True) -> float:
    return floor_amax(amax) / (127.0 if signed else 255.0)


def weight_scales(w: np.ndarray, axis: int = 0) -> np.ndarray:
    """Per-channel symmetric scales along `axis`: float32 (w.shape[axis],)."""
    w = np.asarray(w, dtype=np.float32)
    red = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    amax = np.abs(w).max(axis=red) if red else np.abs(w)
    return (np.where(amax > 0, amax, MIN_AMAX) / 127.0).astype(np.float32)


def quantize_weights(w: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights of w.shape, float32 scales (w.shape[axis],)); round half to even like ONNX."""
    w = np.asarray(w, dtype=np.float32)
    s = weight_scales(w, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / s.reshape(shape)), -127, 127).astype(np.int8)
    return q, s
