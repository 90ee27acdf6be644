"""CalibrationResult (what calibrate() returns) and its JSON cache, keyed by what it depends on.

The cache file is {"key": ..., "key_hash": sha256 of the key, "result": CalibrationResult.to_dict()}.
Files written before the calibration clip value was renamed "amax" hold it under "thresholds";
from_dict reads both.
"""
from __future__ import annotations

import json
import logging
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kernels.io import atomic_write_json, sha256_json

log = logging.getLogger(__name__)

# Bump when anything that changes an amax changes (binning, KL definition, tensor selection).
CALIBRATION_VERSION = "otl-entropy2-v2"  # v2: channel means and candidate amax values


@dataclass
class CalibrationResult:
    """Per ONNX tensor name: amax (>= MIN_AMAX), non-negativity, max|x|, channel means.

    amax: the clip value (scale = amax/127 signed, amax/255 unsigned); max_abs: the largest |x|
    seen, which the "max" method uses as its amax.
    """

    amax: dict[str, float]
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
    # per tensor: the amax each method gives ({"max": a, "percentile99.99": a, ...}), the choices
    # that output-aware refinement (calibration.refine) picks from
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "CalibrationResult":
        d = dict(d)
        if "thresholds" in d and "amax" not in d:  # written before the rename
            d["amax"] = d.pop("thresholds")
        return cls(**d)


def full_key(key: dict | None) -> dict:
    """The caller's key plus the algorithm version (a cache from another version is stale)."""
    k = dict(key or {})
    k["calibration_version"] = CALIBRATION_VERSION
    return k


def save_cache(path, result: CalibrationResult, key: dict | None = None) -> Path:
    """Write {key, key_hash, result} atomically. key: weights hash, cut, input size,
    preprocessing, calibration image list hash, method... (anything that changes an amax)."""
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
