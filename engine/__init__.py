"""otl engine: backbones and cuts, export, builds per precision and backend, featurization,
feature stores, gradient-free training, evaluation, the CLI.

engine/ orchestrates; it uses calibration/ (int8 scales, Q/DQ graphs) and kernels/ (array
numerics: encoders, the optical projection, ridge). The public entry points are importable from
here; they load on first use, so `import engine` stays cheap.

    from engine import BuildConfig, make_build, FitConfig, fit
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "BuildConfig": "engine.build", "make_build": "engine.build", "Build": "engine.build_folder",
    "make_runner": "engine.backends", "load_splits": "engine.data", "Featurizer": "engine.featurize",
    "FeaturizeConfig": "engine.featurize", "featurize": "engine.featurize", "FeatureStore": "engine.store",
    "TransferClassifier": "engine.classifier", "FitConfig": "engine.train", "fit": "engine.train",
    "load_model": "engine.evaluate", "EvaluateConfig": "engine.evaluate", "evaluate": "engine.evaluate",
    "PredictConfig": "engine.evaluate", "predict": "engine.evaluate",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
