"""ONNX Runtime int8 (our Q/DQ) vs fp32 featurization speed, and our calibration vs ORT's.

    python bench/bench_int8.py [--quick] [--models densenet169 mobilenet_v2] [--out DIR]

Random-init torchvision weights (speed does not depend on them) and smooth random images
(low-pass noise, normalized like ImageNet inputs). Prints images/s for fp32, our "onnxruntime"
encoding and onnxruntime.quantization.quantize_static (QDQ, u8 activations, s8 per-channel
weights, its default Entropy calibration), and calibration seconds for ours vs ORT's entropy
calibrator at 2048/128 bins (create_calibrator) on the same images.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def feature_agreement(fp32_feats, int8_feats) -> dict:
    """Sign agreement (fraction of entries with the same sign) and relative error ||a-b|| / ||a||."""
    a = np.asarray(fp32_feats, np.float64).reshape(len(fp32_feats), -1)
    b = np.asarray(int8_feats, np.float64).reshape(len(int8_feats), -1)
    if a.shape != b.shape:
        raise ValueError(f"feature shapes differ: fp32 {a.shape} vs int8 {b.shape}")
    return {"sign_agreement": float(np.mean(np.sign(a) == np.sign(b))),
            "relative_error": float(np.linalg.norm(a - b) / max(np.linalg.norm(a), 1e-30))}


def build_module(name: str):
    import torch
    import torchvision

    torch.manual_seed(0)
    if name == "densenet169":
        feats = torchvision.models.densenet169(weights=None).features[:9]  # through denseblock3
    elif name == "mobilenet_v2":
        feats = torchvision.models.mobilenet_v2(weights=None).features
    else:
        raise ValueError(f"unknown model {name!r}; valid: densenet169, mobilenet_v2")
    module = torch.nn.Sequential(feats, torch.nn.Flatten(1))
    # Random init leaves BN at mean 0 / var 1, so activations shrink ~10x per MobileNet block
    # (1e-9 at the output): re-estimate BN statistics on random images, as a trained net would have.
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    module.train()
    with torch.no_grad():
        for seed in range(2):
            module(torch.from_numpy(images(16, 128, seed=100 + seed)))
    return module.eval()


def export(module, path: Path, size: int):
    import torch

    torch.onnx.export(module, (torch.randn(2, 3, size, size),), str(path), input_names=["images"],
                      output_names=["features"], opset_version=18, dynamo=True, verbose=False,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},))


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth random images, normalized per channel like ImageNet inputs: float32 (n, 3, size, size)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, size // 16, size // 16, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return ((x - mean) / std).numpy().astype(np.float32)


def session(path, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def images_per_s(sess, x: np.ndarray, runs: int) -> tuple[float, np.ndarray]:
    out = sess.run(None, {"images": x})[0]  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        sess.run(None, {"images": x})
        times.append(time.perf_counter() - t)
    return len(x) / statistics.median(times), out


class _Reader:
    def __init__(self, x, batch):
        self.it = iter([{"images": x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.it, None)


def ort_calibration(fp32_path: Path, x: np.ndarray, batch: int, work: Path) -> float:
    """Seconds for ORT's entropy calibrator with 2048 bins / 128 quantized bins on the same images."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    t = time.perf_counter()
    cal = create_calibrator(fp32_path, ["Conv"], augmented_model_path=str(work / "aug.onnx"),
                            calibrate_method=CalibrationMethod.Entropy,
                            extra_options={"num_bins": 2048, "num_quantized_bins": 128, "symmetric": True})
    cal.collect_data(_Reader(x, batch))
    cal.compute_data()
    return time.perf_counter() - t


def ort_quantize_static(fp32_path: Path, out: Path, x: np.ndarray, batch: int) -> float:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    t = time.perf_counter()
    quantize_static(str(fp32_path), str(out), _Reader(x, batch), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    calibrate_method=CalibrationMethod.Entropy)
    return time.perf_counter() - t


def bench_model(name: str, args, work: Path) -> dict:
    import onnx
    import torch

    from calibration import calibrate, quantize_model

    torch.set_num_threads(args.threads)
    module = build_module(name)
    fp32 = work / f"{name}_fp32.onnx"
    export(module, fp32, args.size)
    model = onnx.load(str(fp32))
    calib = images(args.num_calib, args.size, seed=1)
    batches = [torch.from_numpy(calib[i:i + args.batch]) for i in range(0, len(calib), args.batch)]
    t = time.perf_counter()
    res = calibrate(module, batches, model, num_images=args.num_calib, progress=False)
    ours_s = time.perf_counter() - t
    q = quantize_model(model, res.amax, "onnxruntime", res.nonneg, res.channel_mean)  # bias-corrected
    ours = work / f"{name}_int8_ort.onnx"
    onnx.save(q, str(ours))
    row = {"model": name, "calib_images": len(calib), "ours_calib_s": ours_s, "n_tensors": res.n_tensors}
    x = images(args.batch, args.size, seed=2)
    ips32, f32 = images_per_s(session(fp32, args.threads), x, args.runs)
    ips8, f8 = images_per_s(session(ours, args.threads), x, args.runs)
    row.update(fp32_ips=ips32, int8_ips=ips8, ratio=ips8 / ips32, **feature_agreement(f32, f8))
    if not args.skip_ort:
        row["ort_calib_s"] = ort_calibration(fp32, calib, args.batch, work)
        theirs = work / f"{name}_int8_quantize_static.onnx"
        row["quantize_static_s"] = ort_quantize_static(fp32, theirs, calib, args.batch)
        ipsq, fq = images_per_s(session(theirs, args.threads), x, args.runs)
        row.update(qs_ips=ipsq, qs_ratio=ipsq / ips32, qs_relerr=feature_agreement(f32, fq)["relative_error"])
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="16 calibration images, 3 timed runs")
    p.add_argument("--models", nargs="+", default=["densenet169", "mobilenet_v2"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--num-calib", type=int, default=64,
                   help="calibration images (ORT's calibrator holds every intermediate tensor in memory)")
    p.add_argument("--skip-ort", action="store_true", help="skip onnxruntime.quantization's side")
    p.add_argument("--out", type=Path, default=None, help="keep the models here (default: a temp dir)")
    args = p.parse_args(argv)
    if args.quick:
        args.num_calib, args.runs = 16, 3
    with tempfile.TemporaryDirectory() as tmp:
        work = args.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for name in args.models:
            r = bench_model(name, args, work)
            print(f"{name}: fp32 {r['fp32_ips']:.1f} img/s, int8 (ours) {r['int8_ips']:.1f} img/s, "
                  f"ratio {r['ratio']:.2f}x; relerr {r['relative_error']:.4f}, sign agreement "
                  f"{r['sign_agreement']:.4f}; calibration ours {r['ours_calib_s']:.1f} s "
                  f"({r['n_tensors']} tensors, {r['calib_images']} images)", flush=True)
            if "ort_calib_s" in r:
                print(f"  ORT entropy calibrator (2048/128 bins) {r['ort_calib_s']:.1f} s; quantize_static "
                      f"(default Entropy) {r['quantize_static_s']:.1f} s -> {r['qs_ips']:.1f} img/s, ratio "
                      f"{r['qs_ratio']:.2f}x, relerr {r['qs_relerr']:.4f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
