"""Encoders and bit packing: features (n, F) float -> bits (n, F*q) uint8 0/1 -> packed bytes.

The OPU (and its simulation) takes binary inputs. Encoders (`parse_encoder(spec)`):

    sign               x > 0: the reference's "plain_th" encoder. Right for a map that has both
                       signs; useless on a pooled ReLU output (every value is >= 0)
    threshold:T        x > T, one threshold for every feature
    threshold:median   x > the feature's training median (lightonml's BinaryThresholdEncoder "auto")
    thresholds:Q       Q bits per feature, bit j = x > the feature's j/(Q+1) training quantile: a
                       thermometer code, so the Hamming distance counts quantile bins
    none               no encoding: float32 features, for ridge without projection (a linear probe)

Fitted encoders (median, thresholds:Q) learn their thresholds from a row sample (FeatureSample):
exact when the training rows fit in it, else a uniform sample whose rank error is stated
(`rank_error`, the Dvoretzky-Kiefer-Wolfowitz bound at 95 %; kernels/feature_sample.py). Packing is big-endian along axis 1
(NumPy's and CuPy's `packbits(..., axis=1)` default), so a bit-packed store is 8x smaller than bits.
"""
from __future__ import annotations

import math

import numpy as np

from kernels.xp import get_array_module
from kernels.feature_sample import (FeatureSample, fit_on_first_rows, rank_error,  # noqa: F401  (re-exported)
                                    sample_capacity, sample_first_order, with_sample_first)

METHODS = ("sign", "threshold")


def binarize(x, method: str = "sign", threshold: float = 0.0):
    """Bits of `x`: uint8 0/1 array of x's shape, 1 where x > threshold.

    method "sign" is x > 0 (threshold must then be 0); "threshold" is x > `threshold`.
    NaN compares false and so becomes 0: check_finite upstream if that matters.
    """
    if method not in METHODS:
        raise ValueError(f"binarize: unknown method {method!r}; expected one of {METHODS}")
    if method == "sign" and threshold != 0.0:
        raise ValueError(f"binarize: method 'sign' takes no threshold (got {threshold!r}); "
                         "use method='threshold' for a non-zero threshold")
    xp = get_array_module(x)
    x = xp.asarray(x)
    return (x > threshold).view(xp.uint8)


def packbits(bits):
    """Pack (n, d) 0/1 bits into (n, ceil(d/8)) uint8, big-endian bit order, zero padded (d: bits a row)."""
    xp = get_array_module(bits)
    bits = xp.asarray(bits)
    if bits.ndim != 2:
        raise ValueError(f"packbits: expected a 2-D (n, d) bit array, got shape {bits.shape}")
    return xp.packbits(bits.astype(xp.bool_, copy=False), axis=1)


def unpackbits(packed, d: int):
    """Inverse of packbits: (n, ceil(d/8)) uint8 -> (n, d) uint8 0/1 (padding bits dropped)."""
    xp = get_array_module(packed)
    packed = xp.asarray(packed)
    if packed.ndim != 2 or packed.dtype != xp.uint8:
        raise ValueError(f"unpackbits: expected a 2-D uint8 array, got {packed.dtype} {packed.shape}")
    nbytes = packed.shape[1]
    if not (8 * (nbytes - 1) < d <= 8 * nbytes or d == nbytes == 0):
        raise ValueError(f"unpackbits: d={d} does not fit {nbytes} bytes per row "
                         f"(expected {max(8 * (nbytes - 1) + 1, 0)}..{8 * nbytes})")
    # cupy.unpackbits has no `count`/axis arguments in older releases: unpack flat and reshape.
    n = packed.shape[0]
    bits = xp.unpackbits(packed.reshape(-1)).reshape(n, 8 * nbytes)
    return xp.ascontiguousarray(bits[:, :d])


class EncoderError(ValueError):
    """An encoder spec that cannot be parsed, or an encoder used before it was fitted."""


ENCODER_HELP = ('"sign", "threshold:T" (a number), "threshold:median", "thresholds:Q" (Q >= 1 quantile '
                'thresholds per feature) or "none" (floats, with --projection none)')
# The default encoder of otl fit / otl featurize, chosen with the default pooling (avg2) by
# bench/bench_recipes.py; the reference's is "sign".
DEFAULT_SPEC = "threshold:median"
FITTED = ("median", "quantiles")  # methods whose thresholds come from training data


class Encoder:
    """An encoding recipe (method + argument) and, for fitted methods, its thresholds.

    Encoder("threshold", 0.5)(x) -> bits; Encoder("median").fit(sample)(x) -> bits. `to_dict` is
    the recipe (compared between stores and models); `thresholds_` travels as an array.
    """

    METHODS = ("sign", "threshold", "median", "quantiles", "none")

    def __init__(self, method: str = "sign", threshold: float = 0.0, levels: int = 0):
        if method not in self.METHODS:
            raise EncoderError(f"Encoder: unknown method {method!r}; expected one of {self.METHODS}")
        if method == "sign" and threshold != 0.0:
            raise EncoderError(f"Encoder: 'sign' has threshold 0, got {threshold!r}")
        if method == "quantiles" and (isinstance(levels, bool) or not isinstance(levels, (int, np.integer))
                                      or levels < 1):
            raise EncoderError(f"thresholds:Q needs an integer Q >= 1 (Q bits per feature), got Q={levels!r}")
        set_ = object.__setattr__
        set_(self, "method", method)
        set_(self, "threshold", float(threshold))
        set_(self, "levels", int(levels) if method == "quantiles" else 0)
        self.thresholds_ = None  # (F,) for median, (F, Q) for quantiles
        self.stats_: dict | None = None
        self._device = None

    def __setattr__(self, name, value):
        if name in ("method", "threshold", "levels"):  # the recipe is saved with models and stores
            raise AttributeError(f"Encoder.{name} is read-only: make a new Encoder for another recipe")
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ recipe
    @property
    def spec(self) -> str:
        return {"sign": "sign", "median": "threshold:median", "none": "none",
                "quantiles": f"thresholds:{self.levels}"}.get(self.method, f"threshold:{self.threshold!r}")

    @property
    def needs_fit(self) -> bool:
        return self.method in FITTED

    @property
    def fitted(self) -> bool:
        return not self.needs_fit or self.thresholds_ is not None

    @property
    def binary(self) -> bool:
        return self.method != "none"

    def bits_per_feature(self) -> int:
        return self.levels if self.method == "quantiles" else 1

    def to_dict(self) -> dict:
        d = {"method": self.method, "threshold": self.threshold}
        if self.method == "quantiles":
            d["levels"] = self.levels
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Encoder":
        return cls(method=d["method"], threshold=float(d.get("threshold", 0.0)), levels=int(d.get("levels", 0)))

    def __eq__(self, other):
        return isinstance(other, Encoder) and self.to_dict() == other.to_dict()

    def __hash__(self):
        return hash(self.spec)

    def __repr__(self):
        return f"Encoder({self.spec!r}{', fitted' if self.needs_fit and self.fitted else ''})"

    # ------------------------------------------------------------------ fitting
    def levels_q(self) -> np.ndarray:
        """The quantile levels this encoder thresholds at: 0.5, or j/(Q+1) for j = 1..Q."""
        if self.method == "median":
            return np.array([0.5])
        return np.arange(1, self.levels + 1) / (self.levels + 1)

    def fit(self, sample) -> "Encoder":
        """Thresholds from a FeatureSample (or a 2-D array of rows, taken as exact)."""
        if not self.needs_fit:
            return self
        if not isinstance(sample, FeatureSample):
            sample = FeatureSample.of(sample)
        rows = sample.rows()
        if rows.shape[0] == 0:
            raise EncoderError(f"encoder {self.spec} needs training rows to fit its thresholds; got none")
        t = np.quantile(rows.astype(np.float64), self.levels_q(), axis=0).T.astype(np.float32)  # (F, q)
        self.thresholds_ = t[:, 0].copy() if self.method == "median" else np.ascontiguousarray(t)
        self.stats_ = sample.describe()
        self._device = None
        return self

    def set_thresholds(self, thresholds, stats: dict | None = None) -> "Encoder":
        t = np.asarray(thresholds, dtype=np.float32)
        want = 1 if self.method == "median" else 2
        if not self.needs_fit or t.ndim != want or (want == 2 and t.shape[1] != self.levels):
            raise EncoderError(f"encoder {self.spec}: thresholds of shape {t.shape} do not fit it")
        self.thresholds_, self.stats_, self._device = t, stats, None
        return self

    # ------------------------------------------------------------------ encoding
    def __call__(self, x):
        xp = get_array_module(x)
        x = xp.asarray(x)
        if self.method == "none":
            return x.astype(xp.float32, copy=False)
        if self.method in ("sign", "threshold"):
            return binarize(x, self.method, self.threshold)
        if self.thresholds_ is None:
            raise EncoderError(
                f"encoder {self.spec} has no thresholds yet: it learns them from training data. Fit it first "
                "(Encoder.fit(sample), or let TransferClassifier.fit / otl fit do it), or load a fitted model")
        t = self._on(xp)
        if x.ndim != 2 or x.shape[1] != t.shape[0]:
            raise EncoderError(f"encoder {self.spec} was fitted on {t.shape[0]} features, got input of shape "
                               f"{tuple(x.shape)}; use the engine (cut and pool) it was fitted with")
        if self.method == "median":
            return (x > t).view(xp.uint8)
        return (x[:, :, None] > t[None]).view(xp.uint8).reshape(x.shape[0], -1)

    def _on(self, xp):
        if xp is np:
            return self.thresholds_
        if self._device is None:
            self._device = xp.asarray(self.thresholds_)
        return self._device


def parse_encoder(spec) -> Encoder:
    """Parse an encoder spec (see the module docstring); an Encoder passes through unchanged."""
    if isinstance(spec, Encoder):
        return spec
    valid = f"valid: {ENCODER_HELP}"
    if not isinstance(spec, str):
        raise EncoderError(f"encoder spec must be a string, got {type(spec).__name__} {spec!r}; {valid}")
    name, sep, arg = spec.strip().partition(":")
    name, arg = name.strip().lower(), arg.strip()
    if name in ("sign", "none") and not sep:
        return Encoder(name, 0.0)
    if name == "threshold" and sep:
        if arg.lower() == "median":
            return Encoder("median")
        try:
            value = float(arg)
        except ValueError:
            raise EncoderError(f"encoder spec {spec!r}: threshold {arg!r} is neither a number nor 'median'; {valid}") from None
        if not math.isfinite(value):
            raise EncoderError(f"encoder spec {spec!r}: threshold must be finite; {valid}")
        return Encoder("threshold", value)
    if name == "thresholds" and sep:
        try:
            q = int(arg)
        except ValueError:
            raise EncoderError(f"encoder spec {spec!r}: Q {arg!r} is not an integer; {valid}") from None
        if q <= 0:
            raise EncoderError(f"encoder spec {spec!r}: Q must be >= 1 (Q thresholds, Q bits per feature), "
                               f"got {q}; {valid}")
        return Encoder("quantiles", levels=q)
    raise EncoderError(f"unknown encoder spec {spec!r}; {valid}")

