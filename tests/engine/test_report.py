"""`otl report`: one small real report on the digits (random-init MobileNetV2 at 32x32, fp32 and int8
on ONNX Runtime, TensorRT asked for and failing here), its fields, units, stage times, reuse on a
re-run; the arithmetic of standard errors, paired differences and feature agreement."""
from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import REPO

from engine.report import ReportConfig, check_report, make_report
from engine.report import schema
from engine.report.fits import mean_se
from engine.report.headline import headline, paired_difference

SMALL = dict(model="mobilenet_v2", weights="random", input_size=32, cuts=("features.7",), precisions=("fp32", "int8"),
             backends=("onnxruntime", "tensorrt"), n_components=(128, 256), seeds=2,
             sweep_encoders=("threshold:median", "sign"), sweep_pools=(), baseline_epochs=1, calibration_images=32,
             sensitivity_images=2, latency_runs=5, warmup_runs=1, throughput_batch=8, progress=False)


def _tensorrt_runs() -> bool:
    from engine.backends import backend_module

    return backend_module("tensorrt").usable()


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    if _tensorrt_runs():
        pytest.skip("these tests expect the tensorrt variants to fail (no TensorRT here); this machine has it")
    out = tmp_path_factory.mktemp("report") / "small"
    t0 = time.perf_counter()
    rep = make_report(ReportConfig(out=str(out), **SMALL))
    return rep, out, time.perf_counter() - t0


def _ok(rep):
    return [v for v in rep["variants"] if v["status"] == "ok"]


def test_every_field_of_every_variant(small_report):
    rep, out, _ = small_report
    on_disk = json.loads((out / "report.json").read_text())
    assert set(schema.TOP_KEYS) <= set(on_disk)
    assert on_disk["units"] == schema.UNITS
    ids = {v["id"] for v in on_disk["variants"]}
    assert ids == {"features.7/fp32/onnxruntime", "features.7/int8/onnxruntime", "features.7/fp32/tensorrt",
                   "features.7/int8/tensorrt"}
    for v in on_disk["variants"]:
        assert set(schema.VARIANT_KEYS) <= set(v), v["id"]
    ok = _ok(on_disk)
    assert len(ok) == 2
    for v in ok:
        for part, keys in (("backbone", schema.BACKBONE_KEYS), ("build", schema.BUILD_KEYS),
                           ("featurize", schema.FEATURIZE_KEYS), ("accuracy", schema.ACCURACY_KEYS)):
            assert set(keys) <= set(v[part]), (v["id"], part)
        assert set(schema.LATENCY_KEYS) == set(v["featurize"]["latency_ms"])
        assert v["featurize"]["latency_ms"]["p50"] <= v["featurize"]["latency_ms"]["p99"]
        assert len(v["accuracy"]["per_seed_pct"]) == 2 and v["accuracy"]["n_components"] == 256
        assert 10 < v["accuracy"]["mean_pct"] <= 100  # digits: far above chance (10 %) even at random init
        assert v["training_s"] > 0 and v["inference_ms_per_image"] > 0
    int8 = next(v for v in ok if v["precision"] == "int8")
    assert set(schema.AGREEMENT_KEYS) <= set(int8["agreement"])
    # a tiny net keeps its first layers and biases wide: int8 measured 0.6x fp32 on disk here
    assert 0.5 < int8["agreement"]["cosine"] <= 1 and int8["build"]["calibration_s"] > 0
    assert int8["build"]["artifact_mb"] < 0.75 * next(v for v in ok if v["precision"] == "fp32")["build"]["artifact_mb"]


def test_a_backend_that_cannot_run_is_reported_and_the_rest_completes(small_report):
    rep, out, _ = small_report
    failed = [v for v in rep["variants"] if v["backend"] == "tensorrt"]
    assert failed and all(v["status"] == "failed" and "tensorrt" in v["error"].lower() for v in failed)
    assert all(v["accuracy"] is None and v["featurize"] is None for v in failed)
    md = (out / "report.md").read_text()
    assert failed[0]["error"][:40] in md
    assert rep["headline"]["int8_vs_fp32"]["backend"] == "onnxruntime"


def test_stage_times_add_up_to_the_total(small_report):
    rep, _, _ = small_report
    for v in _ok(rep):
        t = v["timings_s"]
        assert set(t) - {"total"} <= set(schema.STAGES), set(t) - set(schema.STAGES)
        staged = sum(t[s] for s in schema.STAGES if s in t)
        assert abs(staged - t["total"]) <= 0.05 + 0.02 * t["total"], (v["id"], staged, t["total"])


def _unitless_floats(obj, path="", unit=False):
    """Float-valued keys without a unit suffix (their own, or their dict's: timings_s.total), outside
    the named ratios and the config."""
    allowed = {"cosine", "relative_l2", "speedup", "size_ratio", "latency_ratio_p50", "time_ratio", "alphas",
               "threshold", "lr", "accuracy_points", "se_points", "memory_gb", "version", "alpha"}
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("config", "environment", "units", "data", "files"):
                continue
            has_unit = any(k.endswith(u) for u in schema.UNITS)
            if isinstance(v, float) and k not in allowed and not (has_unit or unit):
                found.append(f"{path}.{k}")
            found += _unitless_floats(v, f"{path}.{k}", has_unit and isinstance(v, dict))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            found += _unitless_floats(v, f"{path}[{i}]")
    return found


def test_every_number_has_a_unit(small_report):
    rep, _, _ = small_report
    assert _unitless_floats(rep) == []


def test_files_are_listed_with_their_hashes(small_report):
    rep, out, _ = small_report
    assert "report.html" in rep["files"] and "report.md" in rep["files"]
    assert any(f.endswith(".png") for f in rep["files"])
    for rel, entry in rep["files"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == entry["sha256"], rel
    assert not [p for p in out.iterdir() if p.name.startswith(".report-")]  # no temporary folder left


def test_sweeps_sensitivity_and_baseline_ran(small_report):
    rep, _, _ = small_report
    assert [c["n_components"] for c in rep["components"]] == [128, 256]
    assert all(c["status"] == "ok" for c in rep["components"])
    k128, k256 = rep["components"]
    assert k128["per_seed_pct"] != k256["per_seed_pct"]  # a real sweep: other K, other fits
    assert k256["mean_pct"] >= k128["mean_pct"] - 3  # more components do not lose more than noise
    encoders = [(r["encoder"], r["projection"]) for r in rep["recipes"]]
    assert encoders == [("threshold:median", "sim"), ("sign", "sim"), ("none", "none")]
    sens = rep["sensitivity"]
    assert [s["backend"] for s in sens] == ["onnxruntime", "tensorrt"]
    assert sens[0]["status"] == "ok" and sens[0]["tensors"] and sens[1]["status"] == "failed"
    (base,) = rep["baseline"]
    assert base["status"] == "ok" and [e["epoch"] for e in base["epochs"]] == [1]
    assert base["epochs"][0]["training_s"] > 0 and 0 <= base["epochs"][0]["accuracy_pct"] <= 100


def test_a_rerun_reuses_builds_and_stores(small_report):
    rep, out, first_s = small_report
    cfg = dict(SMALL, baseline_epochs=0, sensitivity_images=0, sweep_encoders=(), linear_probe=False)
    again = make_report(ReportConfig(out=str(out), **cfg))
    for v, w in zip(_ok(rep), _ok(again)):
        assert w["build"]["reused"] and w["featurize"]["store_reused"], w["id"]
        assert w["accuracy"]["per_seed_pct"] == v["accuracy"]["per_seed_pct"]
        assert w["timings_s"].get("featurize_train", 0.0) == 0.0
        assert w["timings_s"]["build"] < 0.5 * v["timings_s"]["build"]
        assert w["training_s"] == pytest.approx(v["training_s"], rel=0.5)  # recorded featurization, refitted
    assert again["baseline"] == [] and "report.html" in again["files"]


def test_standard_error_known_answer():
    mean, se = mean_se([1.0, 2.0, 3.0, 4.0])
    assert mean == 2.5 and se == pytest.approx(math.sqrt((2.25 + 0.25 + 0.25 + 2.25) / 3 / 4))
    assert mean_se([5.0]) == (5.0, None)
    a = {"seeds": [0, 1, 2], "per_seed_pct": [80.0, 82.0, 84.0]}
    b = {"seeds": [2, 0, 1], "per_seed_pct": [84.0, 79.0, 80.0]}  # matched by seed, not by position
    diff, se = paired_difference(a, b)
    assert diff == pytest.approx(1.0) and se == pytest.approx(1 / math.sqrt(3))


def test_headline_of_the_sample():
    sample = json.loads((REPO / "tests/fixtures/report/sample.json").read_text())
    h = headline(sample)
    assert h["cut"] == "features.13"  # every sample cut has the same size: the first, by max()
    assert h["int8_vs_fp32"]["accuracy_points"] == pytest.approx(-0.5)
    assert h["int8_vs_fp32"]["speedup"] == pytest.approx(260 / 120, abs=1e-3)
    assert h["fp16_vs_fp32"]["emulated"] is True
    gf = h["gradient_free_vs_backprop"]
    assert gf["accuracy_points"] == pytest.approx(80.0 - 85.0) and gf["time_ratio"] == pytest.approx(1500 / 25.9, abs=1e-3)
    assert gf["backprop_last_pct"] == 85.0 and gf["backprop_last_training_s"] == 1500.0


class _Store:
    """A stand-in feature store: raw test rows and a train sample."""

    def __init__(self, test, train):
        self.test, self.train = test, train

    def raw(self, split):
        return self.test

    def sample(self, split):
        return self.train


def test_agreement_known_answers():
    from engine.report.measure import agreement

    rng = np.random.default_rng(0)
    train = rng.standard_normal((200, 16)).astype(np.float32)
    x = rng.standard_normal((10, 16)).astype(np.float32)
    same = agreement(_Store(x, train), _Store(x, train), "ref")
    assert same["cosine"] == pytest.approx(1) and same["relative_l2"] == 0 and same["bit_agreement_pct"] == 100
    flipped = agreement(_Store(-x, train), _Store(x, train), "ref")
    assert flipped["cosine"] == pytest.approx(-1) and flipped["relative_l2"] == pytest.approx(2)
    one = x.copy()
    med = np.median(train, axis=0)
    one[3, 5] = med[5] + (1.0 if x[3, 5] <= med[5] else -1.0) * (abs(x[3, 5] - med[5]) + 0.5)  # one bit flips
    res = agreement(_Store(one, train), _Store(x, train), "ref")
    assert res["bit_agreement_pct"] == pytest.approx(100 * (1 - 1 / 160), abs=1e-3)
    assert res["images_with_flips_pct"] == pytest.approx(10.0)


def test_speed_times_what_it_says():
    from engine.report.measure import speed

    class Runner:
        def __init__(self):
            self.shapes = []

        def infer(self, x):
            self.shapes.append(x.shape[0])
            return x[:, :1, 0, 0]

    r = Runner()
    res = speed(r, np.zeros((5, 3, 4, 4), np.float32), batch=8, warmup=2, runs=7)
    assert r.shapes[-9:] == [1] * 9  # 2 warm-up runs right before the 7 timed ones, at batch 1
    batches = r.shapes[:-9]
    assert len(batches) >= 4 and set(batches) == {8}  # one untimed first run + at least 3 timed repeats
    assert res["warmup_runs"] == 2 and res["latency_runs"] == 7 and res["images_per_s"] > 0


@pytest.mark.parametrize("change, words", [
    (dict(precisions=("fp8",)), "fp8"), (dict(backends=("cuda",)), "cuda"), (dict(cuts=("features.99",)), "features.99"),
    (dict(baseline_cuts=("features.3",)), "baseline cuts"), (dict(n_components=(0,)), "n_components"),
    (dict(seeds=0), "seeds"), (dict(sweep_encoders=("thresholds:x",)), "thresholds"),
    (dict(encoder="none"), "makes floats"), (dict(cuts=("features.7", "features.7")), "twice"),
    (dict(backends=("torch",)), "torch"), (dict(test_fraction=0.3), "overlap"),
    (dict(data="/nonexistent/images"), "/nonexistent/images")])
def test_bad_requests_are_refused_before_any_work(change, words):
    with pytest.raises(ValueError, match=words.replace(".", r"\.")):
        check_report(ReportConfig(**dict(SMALL, **change)))


def test_cli_refuses_bad_input_with_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "engine.cli", "report", "--precisions", "fp32,fp8", "--out",
                        str(tmp_path / "r")], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and "fp8" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
