"""int8 engines end to end: `otl engines --precision int8` builds, caches and runs both encodings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine.artifacts import read_manifest
from engine.build import EngineConfig, build_engine
from engine.data import load_splits
from engine.runners import make_runner
from engine.runtime import Engine

from conftest import CLOTHING, MOBILENET_WEIGHTS, TINY, needs_shared


def _feats(path, x):
    with make_runner("onnxruntime", path, threads=2) as r:
        return r.infer(x)


def test_int8_build_on_digits_random_weights(tiny_engine, tmp_path):
    res32, _ = tiny_engine
    cfg = EngineConfig(**TINY, precision="int8", backend="onnxruntime", out=str(tmp_path / "i8"),
                       calibration_images=48)
    res = build_engine(cfg)
    assert res["calibration"]["images"] == 48 and res["calibration"]["tensors"] > 10
    m = read_manifest(tmp_path / "i8")
    for f in ("onnx_int8_tensorrt", "onnx_int8_onnxruntime", "trt_calibration_cache", "calibration_cache"):
        assert f in m["files"]
    assert (tmp_path / "i8" / m["files"]["trt_calibration_cache"]["path"]).read_text().startswith("TRT-")
    eng = Engine(tmp_path / "i8")
    x = np.stack([load_splits(None, eng.preprocess).test[i][0] for i in range(16)])
    ref = _feats(res32["engine"], x)
    for name in ("onnx_int8_onnxruntime", "onnx_int8_tensorrt"):
        got = _feats(tmp_path / "i8" / m["files"][name]["path"], x)
        rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
        assert rel < 0.05, (name, rel)  # stated tolerance: 5 % relative (L2) on random weights
    # unchanged request: reused; another calibration set size: recalibrated and rebuilt
    assert build_engine(cfg)["rebuilt"] is False
    cfg.calibration_images = 32
    assert build_engine(cfg)["calibration"]["images"] == 32


def test_keep_fp32_leaves_the_first_activations_unquantized(tiny_engine, tmp_path):
    import onnx

    cfg = EngineConfig(**TINY, precision="int8", backend="onnxruntime", out=str(tmp_path / "k"),
                       calibration_images=16, keep_fp32=0)
    full = build_engine(cfg)
    assert full["calibration"]["kept_fp32"] == []
    cfg.keep_fp32 = 2
    res = build_engine(cfg)
    assert res["rebuilt"] and len(res["calibration"]["kept_fp32"]) == 2  # same scales, other Q/DQ file
    assert res["calibration"]["tensors"] == full["calibration"]["tensors"] - 2
    q_inputs = {n.input[0] for n in onnx.load(res["engine"]).graph.node if n.op_type == "QuantizeLinear"}
    assert not set(res["calibration"]["kept_fp32"]) & q_inputs
    assert "images" in res["calibration"]["kept_fp32"]  # the first quantizable activation is the input
    cfg.keep_fp32 = -1
    with pytest.raises(ValueError, match=r"--keep-fp32 must be >= 0"):
        build_engine(cfg)


def test_int8_unknown_method_lists_valid_ones(tmp_path):
    cfg = EngineConfig(**TINY, precision="int8", out=str(tmp_path / "x"), calibration_method="mse")
    with pytest.raises(ValueError, match=r"mse.*entropy.*max.*percentile"):
        build_engine(cfg)


def test_fewer_calibration_images_than_asked_warns(tmp_path):
    data = tmp_path / "d"
    from PIL import Image

    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (70, 70), (40 * i, 100 if c == "a" else 10, 7)).save(data / c / f"{i}.png")
    cfg = EngineConfig(model="densenet121", cut="pool0", weights="random", input_size=32, precision="int8",
                       backend="onnxruntime", data=str(data), calibration_images=100, out=str(tmp_path / "e"))
    with pytest.warns(UserWarning, match=r"fewer than the 100 asked"):
        res = build_engine(cfg)
    assert res["calibration"]["images"] == 8  # test_fraction 0.2 of 10 images leaves 8 to calibrate on


@pytest.mark.shared
@needs_shared(CLOTHING, MOBILENET_WEIGHTS)
def test_int8_mobilenet_imagenet_keeps_feature_signs(tmp_path, with_torch_home):
    """Real weights, real photos: a regression guard on how close int8 features stay to fp32.

    Measured here (64 calibration images, entropy, every activation int8): 92.4 % of feature signs
    kept and 0.253 relative L2 error with bias correction (91.2 % and 0.282 without). The int8
    issue's goal of >= 99 % sign agreement is NOT met on MobileNetV2: int8 weights alone, with fp32
    activations, already stop at 98.2-98.9 % (bench_int8_accuracy.py). These bounds keep it from
    getting worse."""
    common = dict(model="mobilenet_v2", weights="imagenet", backend="onnxruntime", data=str(CLOTHING))
    f32 = build_engine(EngineConfig(**common, precision="fp32", out=str(tmp_path / "f")))
    i8 = build_engine(EngineConfig(**common, precision="int8", out=str(tmp_path / "i"), calibration_images=64,
                                   keep_fp32=0))
    eng = Engine(i8["build_dir"])
    test = load_splits(CLOTHING, eng.preprocess).test
    x = np.stack([test[i][0] for i in range(0, len(test), 12)])
    a, b = _feats(f32["engine"], x), _feats(i8["engine"], x)
    agree, rel = np.mean((a > 0) == (b > 0)), np.linalg.norm(a - b) / np.linalg.norm(a)
    assert agree >= 0.915, agree
    assert rel <= 0.27, rel


def test_refinement_and_bias_correction_through_the_build(tmp_path, capsys):
    """--refine-images and --no-bias-correction reach the Q/DQ files, the manifest and the build key."""
    import onnx
    from onnx import numpy_helper

    def int32_biases(path):
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer
                if i.data_type == onnx.TensorProto.INT32 and not i.name.endswith("zero_point")}

    cfg = EngineConfig(model="densenet121", cut="denseblock1.2", weights="random", input_size=32, precision="int8",
                       backend="onnxruntime", out=str(tmp_path / "r"), calibration_images=16, keep_fp32=0, threads=2)
    corrected = build_engine(cfg)
    assert corrected["calibration"]["bias_correction"] is True and corrected["calibration"]["refine"] is None
    a = int32_biases(corrected["engine"])
    cfg.bias_correction = False
    plain = build_engine(cfg)  # same calibration cache, other Q/DQ files
    assert plain["rebuilt"] and plain["calibration"]["bias_correction"] is False
    b = int32_biases(plain["engine"])
    # DenseNet's convs have no bias: the correction gives them one (the BN-as-1x1-conv weights are
    # one value per channel, exact in int8, so their biases need none)
    added = set(a) - set(b)
    assert set(b) < set(a) and all(np.abs(a[k]).max() > 0 for k in added)
    assert all(np.array_equal(a[k], b[k]) for k in b)

    from engine.cli import main

    rc = main(["engines", "--model", "densenet121", "--cut", "denseblock1.2", "--weights", "random", "--input-size",
               "32", "--precision", "int8", "--backend", "onnxruntime", "--calibration-images", "16",
               "--keep-fp32", "0", "--refine-images", "8", "--threads", "2", "--out", cfg.out, "--json", "--quiet"])
    assert rc == 0
    r = json.loads(capsys.readouterr().out)["calibration"]["refine"]
    assert r["images"] == 8 and r["trials"] > 0 and r["error_after"] <= r["error_before"]
    assert read_manifest(tmp_path / "r")["calibration"]["summary"]["refine"] == r
    cfg.refine_images = -1
    with pytest.raises(ValueError, match=r"--refine-images must be >= 0"):
        build_engine(cfg)


@pytest.mark.slow
@pytest.mark.shared
@needs_shared(CLOTHING, MOBILENET_WEIGHTS)
def test_int8_mobilenet_refinement_brings_features_closer(tmp_path, with_torch_home):
    """Real weights, real photos: refinement (32 images) beats the default build on held-out test
    images, in both sign agreement and relative error; it changes scales only, never which tensors
    are quantized."""
    import onnx

    common = dict(model="mobilenet_v2", weights="imagenet", backend="onnxruntime", data=str(CLOTHING),
                  calibration_images=64, threads=2)
    f32 = build_engine(EngineConfig(**common, precision="fp32", out=str(tmp_path / "f")))
    base = build_engine(EngineConfig(**common, precision="int8", out=str(tmp_path / "i")))
    ref = build_engine(EngineConfig(**common, precision="int8", refine_images=32, out=str(tmp_path / "r")))
    test = load_splits(CLOTHING, Engine(base["build_dir"]).preprocess).test
    x = np.stack([test[i][0] for i in range(0, len(test), 6)])
    a = _feats(f32["engine"], x)
    stats = {}
    for name, res in (("default", base), ("refined", ref)):
        b = _feats(res["engine"], x)
        stats[name] = (np.mean((a > 0) == (b > 0)), np.linalg.norm(a - b) / np.linalg.norm(a))
    assert stats["refined"][0] > stats["default"][0] and stats["refined"][1] < stats["default"][1], stats

    def quantized(path):
        return sorted(n.input[0] for n in onnx.load(path).graph.node if n.op_type == "QuantizeLinear")
    assert quantized(base["engine"]) == quantized(ref["engine"])
