"""Binarization and bit packing: features (n, k) float -> bits (n, k) uint8 0/1 -> packed bytes.

The OPU (and its simulation) takes binary inputs. `binarize(x, "sign")` is the reference's
"plain_th" encoder with threshold 0. Packing is big-endian along axis 1 (NumPy's and CuPy's
`packbits(..., axis=1)` default), so a bit-packed feature store is 8x smaller than uint8 bits.
"""
from __future__ import annotations

from dataclasses import dataclass

from kernels._util import get_array_module

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
    """Pack (n, k) 0/1 bits into (n, ceil(k/8)) uint8, big-endian bit order, zero padded."""
    xp = get_array_module(bits)
    bits = xp.asarray(bits)
    if bits.ndim != 2:
        raise ValueError(f"packbits: expected a 2-D (n, k) bit array, got shape {bits.shape}")
    return xp.packbits(bits.astype(xp.bool_, copy=False), axis=1)


def unpackbits(packed, k: int):
    """Inverse of packbits: (n, ceil(k/8)) uint8 -> (n, k) uint8 0/1 (padding bits dropped)."""
    xp = get_array_module(packed)
    packed = xp.asarray(packed)
    if packed.ndim != 2 or packed.dtype != xp.uint8:
        raise ValueError(f"unpackbits: expected a 2-D uint8 array, got {packed.dtype} {packed.shape}")
    nbytes = packed.shape[1]
    if not (8 * (nbytes - 1) < k <= 8 * nbytes or k == nbytes == 0):
        raise ValueError(f"unpackbits: k={k} does not fit {nbytes} bytes per row "
                         f"(expected {max(8 * (nbytes - 1) + 1, 0)}..{8 * nbytes})")
    # cupy.unpackbits has no `count`/axis arguments in older releases: unpack flat and reshape.
    n = packed.shape[0]
    bits = xp.unpackbits(packed.reshape(-1)).reshape(n, 8 * nbytes)
    return xp.ascontiguousarray(bits[:, :k])


@dataclass(frozen=True)
class Encoder:
    """A binarization recipe, saved with the classifier: `Encoder("threshold", 0.5)(x)` -> bits."""

    method: str = "sign"
    threshold: float = 0.0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"Encoder: unknown method {self.method!r}; expected one of {METHODS}")
        if self.method == "sign" and self.threshold != 0.0:
            raise ValueError(f"Encoder: 'sign' has threshold 0, got {self.threshold!r}")

    def __call__(self, x):
        return binarize(x, self.method, self.threshold)

    @property
    def spec(self) -> str:
        return "sign" if self.method == "sign" else f"threshold:{self.threshold!r}"

    def to_dict(self) -> dict:
        return {"method": self.method, "threshold": float(self.threshold)}

    @classmethod
    def from_dict(cls, d: dict) -> "Encoder":
        return cls(method=d["method"], threshold=float(d.get("threshold", 0.0)))


def parse_encoder(spec: str) -> Encoder:
    """Parse "sign" or "threshold:<float>" (e.g. "threshold:0.5") into an Encoder."""
    valid = 'valid: "sign" or "threshold:<number>", e.g. "threshold:0.5"'
    if not isinstance(spec, str):
        raise ValueError(f"encoder spec must be a string, got {type(spec).__name__} {spec!r}; {valid}")
    name, sep, arg = spec.strip().partition(":")
    name = name.strip().lower()
    if name == "sign" and not sep:
        return Encoder("sign", 0.0)
    if name == "threshold" and sep:
        try:
            value = float(arg)
        except ValueError:
            raise ValueError(f"encoder spec {spec!r}: threshold {arg!r} is not a number; {valid}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"encoder spec {spec!r}: threshold must be finite; {valid}")
        return Encoder("threshold", value)
    raise ValueError(f"unknown encoder spec {spec!r}; {valid}")
