"""int8 accuracy on real photos: our entropy calibrator vs ONNX Runtime's quantize_static, vs fp32.

clothing (10 classes, train/validation/test), MobileNetV2 ImageNet weights, full features
(1280x7x7), 4,000 optical components, alpha chosen on validation/. For every engine: calibration
time, featurization images/s, test accuracy of the same `fit`, and the sign agreement / relative
error of its features against fp32 on the test split. All calibrators see the same images.

    python bench/bench_int8_accuracy.py [--calibration-images 256] [--components 4000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
SHARED = REPO.parent / "shared"
SEEDS = (0, 1, 2)


def ort_quantize_static(fp32: Path, out: Path, calib: np.ndarray, bins: tuple | None) -> float:
    """quantize_static, QDQ, u8 activations / s8 per-channel weights. bins=(2048, 128): entropy with
    TensorRT's bin counts injected into its create_calibrator; None: its defaults (MinMax)."""
    import importlib

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    q = importlib.import_module("onnxruntime.quantization.quantize")  # the package re-exports a function of that name

    class Reader:
        def __init__(self):
            self.it = iter([{"images": calib[i:i + 32]} for i in range(0, len(calib), 32)])

        def get_next(self):
            return next(self.it, None)

    original = q.create_calibrator

    def with_bins(*a, **k):  # quantize_static does not expose the entropy bin counts
        k["extra_options"] = dict(k.get("extra_options") or {}, num_bins=bins[0], num_quantized_bins=bins[1])
        return original(*a, **k)

    method = CalibrationMethod.Entropy if bins else CalibrationMethod.MinMax
    t0 = time.perf_counter()
    if bins:
        q.create_calibrator = with_bins
    try:
        quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                        calibrate_method=method)
    finally:
        q.create_calibrator = original
    return time.perf_counter() - t0


def evaluate_runner(runner, splits, k: int, threads: int) -> dict:
    from engine.classifier import TransferClassifier
    from engine.featurize import Featurizer

    feats, times = {}, []
    with Featurizer(runner, batch_size=32, workers=2, progress=False) as f:
        for name in ("train", "validation", "test"):
            xs, ys = [], []
            for X, y in f.featurize(getattr(splits, name)):
                xs.append(X.astype(np.float32))
                ys.append(y)
            feats[name] = (np.concatenate(xs), np.concatenate(ys))
        batch = np.stack([splits.test[i][0] for i in range(32)])
        for _ in range(3):
            t0 = time.perf_counter()
            runner.infer(batch)
            times.append(time.perf_counter() - t0)
    # 372 test images: one image is 0.27 points, so the accuracy is averaged over projection seeds
    accs = [TransferClassifier(n_components=k, seed=s).fit(*feats["train"], *feats["validation"])
            .score(*feats["test"]) for s in SEEDS]
    return {"test_accuracy": float(np.mean(accs)), "accs": accs, "test_feats": feats["test"][0],
            "images_per_s": 32 / statistics.median(times)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "clothing"))
    p.add_argument("--calibration-images", type=int, default=256,
                   help="the same images for every calibrator (ONNX Runtime's keeps all activations in memory)")
    p.add_argument("--components", type=int, default=4000)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--build", default=str(REPO / "builds" / "bench-int8-mobilenet_v2"))
    a = p.parse_args(argv)
    if not Path(a.data).is_dir():
        print(f"skipped: {a.data} not found (needs ../shared)")
        return
    import os

    from bench_end_to_end import _torch_home
    from bench_int8 import feature_agreement

    os.environ["TORCH_HOME"] = _torch_home()
    from engine.backbones import preprocess_for
    from engine.build import EngineConfig, build_engine
    from engine.data import iter_batches, load_splits, subset
    from engine.runners import make_runner

    common = dict(model="mobilenet_v2", weights="imagenet", backend="onnxruntime", data=a.data,
                  calibration_images=a.calibration_images, threads=a.threads)
    fp32 = build_engine(EngineConfig(**common, precision="fp32", out=a.build + "-fp32"))
    ours = build_engine(EngineConfig(**common, precision="int8", keep_fp32=0, out=a.build + "-int8"))
    ours_s = ours["calibration"]["seconds"]
    splits = load_splits(a.data, preprocess_for("mobilenet_v2", "imagenet"))
    calib_ds = subset(splits.train, a.calibration_images, seed=0)  # the same images ours used
    calib = np.concatenate([x for x, _, _ in iter_batches(calib_ds, 32, progress=False)])

    pct = build_engine(EngineConfig(**common, precision="int8", calibration_method="percentile", keep_fp32=0,
                                    out=a.build + "-int8-percentile"))
    keep = build_engine(EngineConfig(**common, precision="int8", keep_fp32=3, out=a.build + "-int8-keep3"))
    engines = {"fp32": fp32["engine"], "otl int8 entropy, all int8": ours["engine"],
               "otl int8 percentile, all int8": pct["engine"], "otl int8 entropy, keep 3 fp32 (default)": keep["engine"]}
    seconds = {"fp32": 0.0, "otl int8 entropy, all int8": ours_s,
               "otl int8 percentile, all int8": pct["calibration"]["seconds"],
               "otl int8 entropy, keep 3 fp32 (default)": keep["calibration"]["seconds"]}
    with tempfile.TemporaryDirectory() as tmp:
        for label, bins in (("quantize_static entropy 2048/128", (2048, 128)), ("quantize_static default", None)):
            out = Path(tmp) / (label.replace(" ", "_").replace("/", "_") + ".onnx")
            seconds[label] = ort_quantize_static(Path(fp32["onnx"]), out, calib, bins)
            engines[label] = str(out)
        rows = {}
        for label, path in engines.items():
            with make_runner("onnxruntime", path, threads=a.threads) as r:
                rows[label] = evaluate_runner(r, splits, a.components, a.threads)
    ref = rows["fp32"]
    print(f"clothing, mobilenet_v2 ImageNet, {a.components} components (test accuracy: mean of projection seeds "
          f"{SEEDS}), {a.calibration_images} calibration images, {a.threads} threads; 'calib s' of ours is the "
          "calibration itself (a reused cache reports the time it took when made)")
    print(f"  {'engine':34}{'calib s':>9}{'img/s':>8}{'x fp32':>8}{'test acc':>10}{'vs fp32':>9}{'sign agr':>10}{'rel err':>9}")
    for label, r in rows.items():
        agr = feature_agreement(ref["test_feats"], r["test_feats"])
        print(f"  {label:34}{seconds[label]:>9.1f}{r['images_per_s']:>8.1f}{r['images_per_s'] / ref['images_per_s']:>8.2f}"
              f"{100 * r['test_accuracy']:>9.2f}%{100 * (r['test_accuracy'] - ref['test_accuracy']):>+9.2f}"
              f"{100 * agr['sign_agreement']:>9.2f}%{agr['relative_error']:>9.3f}")


if __name__ == "__main__":
    main()
