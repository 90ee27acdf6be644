"""int8 engines end to end: `otl engines --precision int8` builds, caches and runs both encodings."""
from __future__ import annotations

import json

import numpy as np
import pytest

from engine.artifacts import read_manifest
from engine.build import BuildConfig, make_build
from engine.build_folder import Build
from engine.data import load_splits

from helpers import CLOTHING, MOBILENET_WEIGHTS, TINY, needs_shared
from helpers import ort_features as _feats

# int8 vs fp32 on the digits (random weights), relative L2 error: about 1.5x the value measured
# (0.0124 onnxruntime encoding, 0.0106 tensorrt encoding)
REL_TOL = {"onnx_int8_onnxruntime": 0.019, "onnx_int8_tensorrt": 0.016}


def _rel(a, b) -> float:
    return float(np.linalg.norm(b - a) / np.linalg.norm(a))


def test_int8_build_on_digits_random_weights(tiny_engine, tmp_path):
    res32, _ = tiny_engine
    cfg = BuildConfig(**TINY, precision="int8", backend="onnxruntime", out=str(tmp_path / "i8"),
                       calibration_images=48)
    res = make_build(cfg)
    assert res["calibration"]["images"] == 48 and res["calibration"]["tensors"] > 10
    m = read_manifest(tmp_path / "i8")
    for f in ("onnx_int8_tensorrt", "onnx_int8_onnxruntime", "trt_calibration_cache", "calibration_cache"):
        assert f in m["files"]
    assert (tmp_path / "i8" / m["files"]["trt_calibration_cache"]["path"]).read_text().startswith("TRT-")
    eng = Build(tmp_path / "i8")
    x = np.stack([load_splits(None, eng.preprocess).test[i][0] for i in range(16)])
    ref = _feats(res32["artifact"], x)
    for name in ("onnx_int8_onnxruntime", "onnx_int8_tensorrt"):
        got = _feats(tmp_path / "i8" / m["files"][name]["path"], x)
        rel = _rel(ref, got)
        assert rel < REL_TOL[name], (name, rel)
    # unchanged request: reused; another calibration set size: recalibrated and rebuilt
    assert make_build(cfg)["rebuilt"] is False
    cfg.calibration_images = 32
    assert make_build(cfg)["calibration"]["images"] == 32


def test_keep_fp32_leaves_the_first_activations_unquantized(tiny_engine, tmp_path):
    import onnx

    cfg = BuildConfig(**TINY, precision="int8", backend="onnxruntime", out=str(tmp_path / "k"),
                       calibration_images=16, keep_fp32=0)
    full = make_build(cfg)
    assert full["calibration"]["kept_fp32"] == []
    cfg.keep_fp32 = 2
    res = make_build(cfg)
    assert res["rebuilt"] and len(res["calibration"]["kept_fp32"]) == 2  # same scales, other Q/DQ file
    assert res["calibration"]["tensors"] == full["calibration"]["tensors"] - 2
    q_inputs = {n.input[0] for n in onnx.load(res["artifact"]).graph.node if n.op_type == "QuantizeLinear"}
    assert not set(res["calibration"]["kept_fp32"]) & q_inputs
    assert "images" in res["calibration"]["kept_fp32"]  # the first quantizable activation is the input
    cfg.keep_fp32 = -1
    with pytest.raises(ValueError, match=r"--keep-fp32 must be >= 0"):
        make_build(cfg)


def test_int8_unknown_method_lists_valid_ones(tmp_path):
    cfg = BuildConfig(**TINY, precision="int8", out=str(tmp_path / "x"), calibration_method="mse")
    with pytest.raises(ValueError, match=r"^unknown calibration method 'mse'; valid methods: entropy, max, percentile$"):
        make_build(cfg)


def test_fewer_calibration_images_than_asked_warns(tmp_path):
    data = tmp_path / "d"
    from PIL import Image

    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (70, 70), (40 * i, 100 if c == "a" else 10, 7)).save(data / c / f"{i}.png")
    cfg = BuildConfig(model="densenet121", cut="pool0", weights="random", input_size=32, precision="int8",
                       backend="onnxruntime", data=str(data), calibration_images=100, out=str(tmp_path / "e"))
    with pytest.warns(UserWarning, match=r"fewer than the 100 asked"):
        res = make_build(cfg)
    assert res["calibration"]["images"] == 8  # test_fraction 0.2 of 10 images leaves 8 to calibrate on


def test_image_list_hash_is_the_one_earlier_builds_recorded(tmp_path):
    """Calibration caches and build keys hold image_list_hash, so it must stay what earlier builds
    wrote: for files, "relative path<TAB>size" lines in the subset's order (which is sorted); for
    the digits, the pixels."""
    import hashlib
    from pathlib import Path

    from PIL import Image

    from engine.data import IMAGENET_DEFAULT, subset
    from engine.int8 import image_list_hash

    data = tmp_path / "d"
    for c in ("cat", "dog", "t-shirt"):
        (data / c).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (9 + i, 9), (30 * i, 7, 7)).save(data / c / f"{i}.png")
    splits = load_splits(data / "cat" / "..", IMAGENET_DEFAULT)  # not a resolved path
    ds = subset(splits.train, 7, seed=0)
    root = Path(splits.source["root"])
    earlier = hashlib.sha256()
    for p in ds.paths:
        earlier.update(f"{Path(p).resolve().relative_to(root).as_posix()}\t{Path(p).stat().st_size}\n".encode())
    assert image_list_hash(ds, splits.source["root"]) == earlier.hexdigest()
    digits = subset(load_splits(None, IMAGENET_DEFAULT).train, 16, seed=0)
    assert image_list_hash(digits, None) == hashlib.sha256(digits.images.tobytes()).hexdigest()


@pytest.mark.shared
@needs_shared(CLOTHING, MOBILENET_WEIGHTS)
def test_int8_mobilenet_imagenet_keeps_feature_signs(tmp_path, with_torch_home):
    """Real weights, real photos: a regression guard on how close int8 features stay to fp32.

    Measured here (64 calibration images, entropy, every activation int8): 92.4 % of feature signs
    kept and 0.253 relative L2 error with bias correction (91.2 % and 0.282 without). The int8
    issue's goal of >= 99 % sign agreement is NOT met on MobileNetV2: int8 weights alone, with fp32
    activations, already stop at 98.2-98.9 % (bench_int8_accuracy.py). These bounds keep it from
    getting worse."""
    common = dict(model="mobilenet_v2", weights="imagenet", backend="onnxruntime", data=str(CLOTHING),
                  input_size=224, pool="avg2")  # as when the bounds below were set
    f32 = make_build(BuildConfig(**common, precision="fp32", out=str(tmp_path / "f")))
    i8 = make_build(BuildConfig(**common, precision="int8", out=str(tmp_path / "i"), calibration_images=64,
                                   keep_fp32=0))
    eng = Build(i8["build_dir"])
    test = load_splits(CLOTHING, eng.preprocess).test
    x = np.stack([test[i][0] for i in range(0, len(test), 12)])
    a, b = _feats(f32["artifact"], x), _feats(i8["artifact"], x)
    agree, rel = np.mean((a > 0) == (b > 0)), _rel(a, b)
    assert agree >= 0.915, agree
    assert rel <= 0.27, rel


def test_refinement_and_bias_correction_through_the_build(tmp_path, capsys):
    """--refine-images and --no-bias-correction reach the Q/DQ files, the manifest and the build key;
    refinement changes some amax values and lowers the feature error (measured here, on ONNX Runtime)."""
    import shutil

    import onnx
    from onnx import numpy_helper

    def int32_biases(path):
        return {i.name: numpy_helper.to_array(i) for i in onnx.load(path).graph.initializer
                if i.data_type == onnx.TensorProto.INT32 and not i.name.endswith("zero_point")}

    cfg = BuildConfig(model="densenet121", cut="denseblock1.2", weights="random", input_size=32, precision="int8",
                       backend="onnxruntime", out=str(tmp_path / "r"), calibration_images=16, keep_fp32=0, threads=2)
    corrected = make_build(cfg)
    assert corrected["calibration"]["bias_correction"] is True and corrected["calibration"]["refine"] is None
    unrefined = shutil.copy(corrected["artifact"], tmp_path / "unrefined.onnx")  # the build below replaces it
    a = int32_biases(corrected["artifact"])
    cfg.bias_correction = False
    plain = make_build(cfg)  # same calibration cache, other Q/DQ files
    assert plain["rebuilt"] and plain["calibration"]["bias_correction"] is False
    b = int32_biases(plain["artifact"])
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
    assert r["images"] == 8 and r["trials"] > 0 and r["changed"]
    m = read_manifest(tmp_path / "r")
    assert m["calibration"]["summary"]["refine"] == r
    # the fp32 file and both int8 files on the 8 calibration images refinement measured on
    from engine.int8 import calibration_plan

    plan = calibration_plan(cfg, Build(cfg.out).preprocess, m["cut"]["name"], m["weights"]["id"])
    x = np.stack([plan.dataset[i][0] for i in range(8)])
    ref = _feats(tmp_path / "r" / m["files"]["onnx_fp32"]["path"], x)
    before = _rel(ref, _feats(unrefined, x))
    after = _rel(ref, _feats(tmp_path / "r" / m["files"]["onnx_int8_onnxruntime"]["path"], x))
    assert after < before
    assert (before, after) == pytest.approx((r["error_before"], r["error_after"]), rel=1e-4, abs=1e-6)
    cfg.refine_images = -1
    with pytest.raises(ValueError, match=r"--refine-images must be >= 0"):
        make_build(cfg)


@pytest.mark.slow
@pytest.mark.shared
@needs_shared(CLOTHING, MOBILENET_WEIGHTS)
def test_int8_mobilenet_refinement_brings_features_closer(tmp_path, with_torch_home):
    """Real weights, real photos: refinement (32 images) beats the default build on held-out test
    images, in both sign agreement and relative error; it changes scales only, never which tensors
    are quantized."""
    import onnx

    common = dict(model="mobilenet_v2", weights="imagenet", backend="onnxruntime", data=str(CLOTHING),
                  input_size=224, pool="avg2", calibration_images=64, threads=2)
    f32 = make_build(BuildConfig(**common, precision="fp32", out=str(tmp_path / "f")))
    base = make_build(BuildConfig(**common, precision="int8", out=str(tmp_path / "i")))
    ref = make_build(BuildConfig(**common, precision="int8", refine_images=32, out=str(tmp_path / "r")))
    test = load_splits(CLOTHING, Build(base["build_dir"]).preprocess).test
    x = np.stack([test[i][0] for i in range(0, len(test), 6)])
    a = _feats(f32["artifact"], x)
    stats = {}
    for name, res in (("default", base), ("refined", ref)):
        b = _feats(res["artifact"], x)
        stats[name] = (np.mean((a > 0) == (b > 0)), np.linalg.norm(a - b) / np.linalg.norm(a))
    assert stats["refined"][0] > stats["default"][0] and stats["refined"][1] < stats["default"][1], stats

    def quantized(path):
        return sorted(n.input[0] for n in onnx.load(path).graph.node if n.op_type == "QuantizeLinear")
    assert quantized(base["artifact"]) == quantized(ref["artifact"])
