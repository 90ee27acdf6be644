"""Model files: a fitted TransferClassifier on disk (one .npz, no pickle), and the otl model file
that adds the build which made its features and the split it was trained on (save_model;
engine/evaluate.py's load_model reads it back).

    meta, arrays = classifier_state(clf)           # JSON-able dict, {name: ndarray}
    save_npz(path, meta, arrays)                   # written atomically
    clf = classifier_from_state(TransferClassifier, *load_npz(path))

Layout of the .npz: one array per entry of `arrays` and a `__meta__` entry, the UTF-8 bytes of the
JSON metadata as uint8. The arrays:
    coef                float64 (k, n_classes)  the head's weights (ridge or logistic) (k: n_components, or the bits for projection none)
    intercept           float64 (n_classes,)
    encoder_thresholds  float32 (F,) for threshold:median, (F, Q) for thresholds:Q; absent for sign
The metadata: "format" ("otl-transfer-classifier" for a bare classifier; engine/train.py's model
files say "otl-model" and add the build and the split), "format_version", the constructor
parameters, the alpha grid and the chosen alpha, the selection record, the classes, the encoder,
the projection's state (its seed and shape: the random matrix is drawn again on load), the
solver that ran and the training counts.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from kernels.io import atomic_write_bytes
from kernels.xp import to_host

FORMAT_VERSION = 2  # 2: selection record, the relative alpha grid, n_final; version 1 files still load
FORMATS = ("otl-model", "otl-transfer-classifier")
_PARAMS = ("n_components", "projection", "seed", "fit_intercept", "solver", "matrix_dtype", "camera_bits",
           "select", "folds", "refit_validation", "head")


class ModelFileError(ValueError):
    """A classifier file that is corrupt, incomplete or for another engine."""


def classifier_state(clf) -> tuple[dict, dict]:
    """(JSON-able metadata, arrays) of a fitted TransferClassifier: everything needed to predict."""
    selection = getattr(clf, "selection_", None)
    meta = {
        "format": "otl-transfer-classifier", "format_version": FORMAT_VERSION,
        "params": {**{k: getattr(clf, k) for k in _PARAMS}, "encoder": clf.encoder_.spec},
        "alphas": _alpha_grid(clf), "alpha": clf.alpha_,
        "selection": selection.to_dict() if selection is not None else None,
        "n_final": getattr(clf, "n_final_", clf.n_train_),
        "classes": [c.item() if hasattr(c, "item") else c for c in clf.classes_],
        "encoder": clf.encoder_.to_dict(), "encoder_stats": clf.encoder_.stats_,
        "solver_used": clf.solver_, "n_train": clf.n_train_, "head": getattr(clf, "head_", "ridge"),
        "head_scores": getattr(clf, "head_scores_", None),
        "projection_state": clf.projection_.to_dict() if clf.projection_ is not None else None,
        "validation_accuracy": clf.validation_accuracy_,
    }
    arrays = {"coef": to_host(clf.coef_), "intercept": to_host(clf.intercept_)}
    if clf.encoder_.thresholds_ is not None:
        arrays["encoder_thresholds"] = clf.encoder_.thresholds_
    return meta, arrays


def _alpha_grid(clf) -> list:
    """The grid alpha was chosen from (the selection's, else the given one), else [alpha_]."""
    sel = getattr(clf, "selection_", None)
    grid = sel.alphas if sel is not None else clf._grid_or_none()
    return [float(a) for a in (grid if grid is not None else [clf.alpha_])]


def classifier_from_state(cls, meta: dict, arrays: dict):
    """A `cls` (TransferClassifier) ready to predict, from classifier_state's (meta, arrays).
    Pops "encoder_thresholds" from arrays."""
    from kernels.encode import Encoder

    clf = cls(alphas=meta["alphas"], **dict(meta["params"]))
    clf.alphas_ = np.asarray(meta["alphas"])
    clf.encoder_ = Encoder.from_dict(meta["encoder"])
    if clf.encoder_.needs_fit:
        if "encoder_thresholds" not in arrays:
            raise ModelFileError(f"the model's encoder {clf.encoder_.spec} has no thresholds in the file; "
                                 "it is incomplete: retrain it")
        clf.encoder_.set_thresholds(arrays.pop("encoder_thresholds"), meta.get("encoder_stats"))
    clf.projection_ = _projection_from_dict(meta["projection_state"])
    clf.alpha_, clf.classes_, clf.solver_ = meta["alpha"], meta["classes"], meta["solver_used"]
    clf.head_ = meta.get("head", "ridge")  # files from before the logistic head are ridge
    clf.head_scores_ = meta.get("head_scores")
    clf.n_train_, clf.validation_accuracy_ = meta["n_train"], meta.get("validation_accuracy")
    clf.n_final_, clf.selection_record_ = meta.get("n_final", meta["n_train"]), meta.get("selection")
    clf.coef_, clf.intercept_ = arrays["coef"], arrays["intercept"]
    return clf


def _projection_from_dict(state: dict | None):
    from kernels.lightonml import LightOnOPU
    from kernels.projection import SimulatedOPU

    if state is None:
        return None
    if state.get("kind") == "SimulatedOPU":
        return SimulatedOPU.from_dict(state)
    return LightOnOPU.from_dict(state)


def save_npz(path, meta: dict, arrays: dict) -> Path:
    """One file: arrays plus a JSON metadata entry, written atomically. No pickle inside."""
    buf = io.BytesIO()
    np.savez(buf, __meta__=np.frombuffer(json.dumps(meta, default=str).encode(), dtype=np.uint8), **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_npz(path) -> tuple[dict, dict]:
    """(meta, arrays) of an otl .npz; raises ModelFileError for a missing, corrupt or foreign file."""
    from engine.checks import file_kind

    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file {path} does not exist; train one with `otl fit --out {path}`")
    kind = file_kind(path)
    if not kind.endswith("zip archive"):  # an .npz is a zip: say what came instead of numpy's allow_pickle advice
        raise ModelFileError(f"model file {path} is {kind}, not an otl model (.npz); pass the file "
                             "`otl fit --out MODEL.npz` wrote")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(arrays.pop("__meta__").tobytes().decode())
    except Exception as e:  # truncated zip, bad JSON, not an npz at all
        raise ModelFileError(f"model file {path} is corrupt or not an otl model ({type(e).__name__}: {e}); "
                             "retrain it with `otl fit`") from e
    if meta.get("format") not in FORMATS:
        raise ModelFileError(f"{path} is not an otl model file (format {meta.get('format')!r})")
    return meta, arrays


# ----------------------------------------------------------------------------- otl model files
# A classifier plus the build that made its features and the split it was trained on.

SPLIT_KEYS = ("kind", "layout", "root", "seed", "test_fraction", "validation_fraction", "validation_source",
              "counts", "split_hashes", "file_list_hash")


def split_record(source: dict) -> dict:
    """What a model file keeps of load_splits' source: enough to re-create and verify each split."""
    return {k: source.get(k) for k in SPLIT_KEYS}


def save_model(path, clf, build_info: dict, build_root, split: dict | None = None) -> Path:
    """The classifier plus its build reference and the split it was trained on, one .npz."""
    meta, arrays = clf.state()
    meta = dict(meta, format="otl-model", build=build_info, split=split,
                build_dir=str(Path(build_root).resolve()) if build_root else None)
    return save_npz(path, meta, arrays)
