"""Scales from thresholds, per-channel weight quantization, and the JSON calibration cache.

Conventions (symmetric, zero point 0):
  activation, signed      scale = threshold / 127      int8  in [-128, 127]
  activation, unsigned    scale = threshold / 255      uint8 in [0, 255]   (tensor min >= 0)
  weight, per out channel scale = max|w_c| / 127       int8  in [-127, 127]
A threshold of 0 (an all-zero tensor or channel) uses MIN_THRESHOLD so no scale is 0; positive
thresholds are kept however small (random-init nets can carry activations of 1e-9).
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kernels.io import atomic_write_json, sha256_json

log = logging.getLogger(__name__)

# Bump when anything that changes thresholds changes (binning, KL definition, tensor selection).
CALIBRATION_VERSION = "otl-entropy2-v2"  # v2: channel means and candidate thresholds
# Floor of a threshold: an all-zero tensor gets scale MIN_THRESHOLD / 127, never 0.
MIN_THRESHOLD = 2.0 ** -20


@dataclass
class CalibrationResult:
    """Per ONNX tensor name: threshold (>= MIN_THRESHOLD), non-negativity, max|x|, channel means.

    thresholds: the clipping value T (scale = T/127 signed, T/255 unsigned).
    """

    thresholds: dict[str, float]
    nonneg: dict[str, bool]
    max_abs: dict[str, float]
    method: str
    num_images: int
    n_tensors: int
    seconds: float
    version: str = CALIBRATION_VERSION
    key: dict = field(default_factory=dict)
    # per tensor: mean of each channel (dim 1) over the calibration images (weight bias correction)
    channel_mean: dict[str, list[float]] = field(default_factory=dict)
    # per tensor: the threshold each method gives ({"max": T, "percentile99.99": T, ...}), the
    # choices that output-aware refinement (calibration.refine) picks from
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)

    def scales(self, signed: bool = True) -> dict[str, float]:
        """threshold / 127 per tensor (TensorRT's convention)."""
        return {k: act_scale(t, signed=signed) for k, t in self.thresholds.items()}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CalibrationResult":
        return cls(**d)


def floor_threshold(threshold: float) -> float:
    t = float(threshold)
    return t if t > 0.0 and t < float("inf") else MIN_THRESHOLD


def act_scale(threshold: float, signed: bool = True) -> float:
    return floor_threshold(threshold) / (127.0 if signed else 255.0)


def weight_scales(w: np.ndarray, axis: int = 0) -> np.ndarray:
    """Per-channel symmetric scales along `axis`: float32 (w.shape[axis],)."""
    w = np.asarray(w, dtype=np.float32)
    red = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    amax = np.abs(w).max(axis=red) if red else np.abs(w)
    return (np.where(amax > 0, amax, MIN_THRESHOLD) / 127.0).astype(np.float32)


def quantize_weights(w: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(int8 weights of w.shape, float32 scales (w.shape[axis],)); round half to even like ONNX."""
    w = np.asarray(w, dtype=np.float32)
    s = weight_scales(w, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / s.reshape(shape)), -127, 127).astype(np.int8)
    return q, s


# ---------------------------------------------------------------- JSON cache


def full_key(key: dict | None) -> dict:
    """The caller's key plus the algorithm version (a cache from another version is stale)."""
    k = dict(key or {})
    k["calibration_version"] = CALIBRATION_VERSION
    return k


def save_cache(path, result: CalibrationResult, key: dict | None = None) -> Path:
    """Write {key, key_hash, result} atomically. key: weights hash, cut, input size,
    preprocessing, calibration image list hash, method... (anything that changes the scales)."""
    k = full_key(key if key is not None else result.key)
    result.key = k
    return atomic_write_json(path, {"key": k, "key_hash": sha256_json(k), "result": result.to_dict()})


def load_cache(path, key: dict | None) -> CalibrationResult | None:
    """The cached result when its key equals `key` (+ version); else None and a warning saying why."""
    path = Path(path)
    if not path.exists():
        log.info("no calibration cache at %s", path)
        return None
    try:
        data = json.loads(path.read_text())
        cached_key = data["key"]
        result = CalibrationResult.from_dict(data["result"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        _stale(f"calibration cache {path} is unreadable ({e}); recalibrating")
        return None
    want = full_key(key)
    if cached_key != want:
        diffs = [f"{k}: cached {cached_key.get(k)!r} != wanted {want.get(k)!r}"
                 for k in sorted(set(cached_key) | set(want)) if cached_key.get(k) != want.get(k)]
        _stale(f"calibration cache {path} is stale ({'; '.join(diffs)}); recalibrating")
        return None
    return result


def _stale(msg: str) -> None:
    log.warning(msg)
    warnings.warn(msg, stacklevel=3)
