"""Array numerics of the training path, written once for NumPy and CuPy.

kernels/ is the bottom layer: it imports nothing from engine/ or calibration/. Its public API is
importable from here (`from kernels import SimulatedOPU, NormalEquations`); each name loads its
module on first use, so `import kernels` itself imports nothing (not even NumPy).

    encode.py         Encoder, parse_encoder, binarize, packbits: features -> 0/1 bits (n, d)
    feature_sample.py FeatureSample: the row sample encoders are fitted on
    projection.py     SimulatedOPU: bits (n, d) -> optical random features (n, k)
    opu_matrix.py     its random matrix: RNG scheme, per-component draws, storage dtypes
    matrix_cache.py   MatrixCache: that matrix on disk, once per machine
    lightonml.py      LightOnOPU: lightonml's OPU (a real device or its simulator)
    ridge.py          NormalEquations: streamed ridge statistics of features (n, k), targets
    solvers.py        solve_ridge_path, resolve_solver: pure ridge solvers
    loo.py            SpectralRidge: exact leave-one-out for every alpha
    selection.py      choosing alpha: LOO, K-fold from statistics, holdout
    io.py, xp.py      atomic writes and hashing; the array module (NumPy or CuPy)
    progress.py       show_progress, progress_bar: the one rule for progress bars

d is the projection's input features (bits), k the projected components = the ridge features.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "encode": ("Encoder", "EncoderError", "parse_encoder", "binarize", "packbits", "unpackbits", "DEFAULT_SPEC"),
    "feature_sample": ("FeatureSample", "fit_on_first_rows", "with_sample_first", "sample_capacity", "rank_error"),
    "projection": ("SimulatedOPU",),
    "opu_matrix": ("RNG_SCHEME", "MATRIX_DTYPES"),
    "matrix_cache": ("MatrixCache", "CacheWarning"),
    "lightonml": ("LightOnOPU",),
    "ridge": ("NormalEquations", "RidgePath", "one_vs_all_targets", "predict_scores"),
    "solvers": ("SOLVERS", "check_alphas", "resolve_solver", "solve_ridge_path", "solve_dual_path"),
    "loo": ("SpectralRidge",),
    "selection": ("Selection", "SelectionError", "FoldedNormalEquations", "search", "choose", "relative_alphas",
                  "alpha_scale", "kfold_squared_error", "resolve_method"),
    "io": ("atomic_write_bytes", "atomic_write_text", "atomic_write_json", "sha256_file", "sha256_json"),
    "xp": ("get_array_module", "to_host", "check_finite"),
    "progress": ("show_progress", "progress_bar"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"kernels.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
