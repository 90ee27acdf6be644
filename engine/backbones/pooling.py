"""Pooling at the cut: `--pool none | avg | avgN`, part of the exported engine (build_cut appends
torch's AdaptiveAvgPool2d(N) to the cut), so every backend and precision gets it.
"""
from __future__ import annotations

import re

from engine.backbones.registry import BackboneError

POOL_HELP = "none (the full C x H x W map, the reference) | avg (global average: C) | avgN (N x N adaptive average: C*N*N)"
# The default recipe's pooling, chosen by bench/bench_recipes.py (docs/benchmarks.md): a 3 x 3
# average (on the 9 x 9 map of the default 288 input: bins of 3 x 3 pixels), or the largest N x N
# average the map allows (avg2, avg) on smaller maps.
DEFAULT_POOL = "avg3"


def default_pool(shape) -> str:
    """DEFAULT_POOL, or the largest smaller N x N average a (C, H, W) map allows ("avg" below 2 x 2)."""
    side = min(shape[1:]) if len(shape) == 3 else 1
    n = min(pool_grid(DEFAULT_POOL), side)
    return "avg" if n <= 1 else f"avg{n}"


def pool_grid(pool: str) -> int:
    """0 for "none", N for "avgN" ("avg" is avg1). Raises BackboneError on anything else."""
    if not isinstance(pool, str):
        raise BackboneError(f"pool must be a string, got {type(pool).__name__} {pool!r}; valid: {POOL_HELP}")
    spec = pool.strip().lower()
    if spec == "none":
        return 0
    m = re.fullmatch(r"avg(\d*)", spec)
    if m and (m.group(1) == "" or int(m.group(1)) >= 1):
        return int(m.group(1) or 1)
    raise BackboneError(f"unknown pool {pool!r}; valid: {POOL_HELP}")


def pooled_features(shape, pool: str) -> int:
    """Feature count of a (C, H, W) map after `pool`."""
    n = pool_grid(pool)
    c, *spatial = shape
    if not n:
        out = c
        for d in spatial:
            out *= d
        return out
    return c * n * n


def check_pool(pool: str, model: str, cut: str, shape, input_size: int) -> None:
    """An N x N average needs a map of at least N x N (otherwise bins would repeat pixels)."""
    n = pool_grid(pool)
    if n and (len(shape) != 3 or n > min(shape[1:])):
        h, w = (shape[1], shape[2]) if len(shape) == 3 else (1, 1)
        raise BackboneError(
            f"--pool {pool} needs a feature map of at least {n}x{n}, but {model} cut {cut} gives "
            f"{'x'.join(map(str, shape))} at input {input_size}; possible: none, avg"
            + (f", avg2 .. avg{min(h, w)}" if min(h, w) >= 2 else "")
            + " (or cut earlier, or use a larger --input-size)")
