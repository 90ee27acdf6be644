"""Build folders, feature stores and model files written before the build/artifact rename still
load, run and score as they did (tests/fixtures/v1, written by the code of that time)."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from engine.build import BuildConfig, make_build
from engine.build_folder import Build
from engine.evaluate import EvaluateConfig, evaluate
from engine.store import FeatureStore
from engine.evaluate import load_model
from engine.train import FitConfig, fit
from helpers import ort_features

V1 = Path(__file__).resolve().parents[1] / "fixtures" / "v1"
ACCURACY_WHEN_WRITTEN = 0.8774373259052924  # both models, digits test split, 359 images


@pytest.fixture
def v1(tmp_path):
    shutil.copytree(V1, tmp_path / "v1")
    return tmp_path / "v1"


def test_old_build_loads_runs_and_keeps_its_key(v1):
    b = Build(v1 / "build", threads=2)
    assert "artifact" not in b.manifest and b.artifact_path() == v1 / "build" / "model.fp32.onnx"
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32), dtype=np.float32)
    with b.runner() as r:
        np.testing.assert_array_equal(r.infer(x), ort_features(v1 / "build" / "model.fp32.onnx", x))
    # The same request today (its recipe named: the default pool has changed since) hashes to the
    # same key: the folder is reused, not rebuilt.
    res = make_build(BuildConfig(model="mobilenet_v2", cut="features.4", weights="random", input_size=32,
                                 pool="avg2", backend="onnxruntime", out=str(v1 / "build")))
    assert res["rebuilt"] is False and res["artifact"] == str(v1 / "build" / "model.fp32.onnx")


@pytest.mark.parametrize("name", ["model.npz", "model_from_store.npz"])
def test_old_models_evaluate_as_when_written(v1, name):
    m = load_model(v1 / name)
    assert "build" not in m.meta and m.build_info["key"] == Build(v1 / "build").key
    ev = evaluate(EvaluateConfig(str(v1 / name), build=str(v1 / "build"), workers=0, progress=False))
    assert ev["n"] == 359 and ev["accuracy"] == pytest.approx(ACCURACY_WHEN_WRITTEN, abs=1e-12)


def test_old_store_names_its_build_and_fits(v1):
    store = FeatureStore(v1 / "store", build_key=Build(v1 / "build").key)
    assert "build" not in store.manifest and store.encoder().spec == "threshold:median"
    _, s = fit(FitConfig(features=str(v1 / "store"), n_components=200, projection="sim", head="ridge",
                         progress=False))  # the head the v1 accuracy was written with
    assert s["build"]["key"] == store.build_info["key"]
    assert s["test_accuracy"] == pytest.approx(ACCURACY_WHEN_WRITTEN, abs=1e-12)  # same rows, same seed
