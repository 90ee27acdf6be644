"""int8 builds: pick calibration images, run our entropy calibrator, write both Q/DQ encodings.

calibration/ does the numerics (histograms via torch hooks, amax per tensor, Q/DQ insertion); this
module decides which images it sees and what the cache key holds, so that a cache made for other
weights, another cut, input size, preprocessing or image set is never used.
"""
from __future__ import annotations

import dataclasses
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

CALIBRATION_CACHE = "calibration.json"


@dataclass
class CalibrationPlan:
    dataset: object  # the calibration subset (an engine.data dataset)
    asked: int
    method: str
    source: dict
    image_list_hash: str
    weights_id: str
    cut: str | None
    model: str
    preprocess: dict
    keep_fp32: int = 3
    bias_correction: bool = True
    refine_images: int = 0

    def key_parts(self) -> dict:
        """What the calibration cache depends on (keep_fp32 changes the Q/DQ files, not the amax values)."""
        return {"model": self.model, "cut": self.cut, "weights": self.weights_id, "method": self.method,
                "images": self.image_list_hash, "num_images": len(self.dataset), "preprocess": self.preprocess,
                "data": self.source.get("file_list_hash")}


def image_list_hash(dataset, root: str | None) -> str:
    """What the calibration images are: for image files, engine.data's file_list_hash (relative
    paths and sizes, sorted); for the digits, the pixels themselves."""
    from engine.data import file_list_hash

    if hasattr(dataset, "paths"):
        return file_list_hash(Path(root), [Path(p).resolve() for p in dataset.paths])
    return hashlib.sha256(dataset.images.tobytes()).hexdigest()


def calibration_plan(cfg, preprocess, cut_name: str, weights_id: str) -> CalibrationPlan:
    """The images int8 calibrates on: a seeded, class-stratified subset of the training split."""
    from calibration.entropy import check_method
    from engine.data import load_splits, subset

    check_method(cfg.calibration_method)
    if cfg.keep_fp32 < 0:
        raise ValueError(f"--keep-fp32 must be >= 0 (activations left in fp32), got {cfg.keep_fp32}")
    if cfg.refine_images < 0:
        raise ValueError(f"--refine-images must be >= 0 (0: no refinement), got {cfg.refine_images}")
    if cfg.calibration_images < 1:
        raise ValueError(f"--calibration-images must be >= 1, got {cfg.calibration_images}")
    splits = load_splits(cfg.data, preprocess, seed=cfg.seed)
    ds = subset(splits.train, cfg.calibration_images, seed=cfg.seed)
    return CalibrationPlan(
        dataset=ds, asked=cfg.calibration_images, method=cfg.calibration_method, source=splits.source,
        image_list_hash=image_list_hash(ds, splits.source["root"]), weights_id=weights_id, cut=cut_name,
        model=cfg.model, preprocess=preprocess.to_dict(), keep_fp32=cfg.keep_fp32,
        bias_correction=cfg.bias_correction, refine_images=cfg.refine_images,
    )


def build_int8(module, fp32_onnx, out: Path, plan: CalibrationPlan, cfg) -> tuple[dict, dict]:
    """Calibrate (or reuse a matching cache) and write the Q/DQ files. Returns (files, manifest part)."""
    import torch

    from calibration import calibrate, write_qdq_models
    from engine.data import iter_batches

    progress = None if cfg.verbose else False
    if len(plan.dataset) < plan.asked:
        warnings.warn(f"int8 calibration: {len(plan.dataset)} images available, fewer than the "
                      f"{plan.asked} asked (--calibration-images); amax values may be less reliable")
    batches = (torch.from_numpy(x) for x, _, _ in
               iter_batches(plan.dataset, cfg.batch_size, progress=progress, desc="calibration"))
    result = calibrate(module, batches, str(fp32_onnx), method=plan.method, num_images=len(plan.dataset),
                       cache_path=out / CALIBRATION_CACHE, cache_key=plan.key_parts())
    result, kept = _keep_fp32(result, fp32_onnx, plan.keep_fp32)
    refine = None
    if plan.refine_images:
        result, refine = _refine(result, fp32_onnx, plan, cfg.threads, progress)
    paths = write_qdq_models(str(fp32_onnx), result, out, bias_correction=plan.bias_correction)
    files = {"onnx_int8_tensorrt": paths["tensorrt"], "onnx_int8_onnxruntime": paths["onnxruntime"],
             "trt_calibration_cache": paths["trt_cache"], "calibration_cache": out / CALIBRATION_CACHE}
    summary = {"tensors": len(result.amax), "images": result.num_images, "method": result.method,
               "seconds": round(result.seconds, 3), "version": result.version, "kept_fp32": kept,
               "bias_correction": plan.bias_correction, "refine": refine}
    return files, {"summary": summary, "source": {k: plan.source.get(k) for k in ("kind", "root", "file_list_hash")},
                   "image_list_hash": plan.image_list_hash}


def _keep_fp32(result, fp32_onnx, n: int):
    """(result without the amax of the first n quantized activations, their names).

    The first layers are the most sensitive: an error there propagates through every layer after
    it (MobileNetV2 on real photos: the first two activations alone carry a third of the int8
    feature error). A tensor without an amax stays fp32 in both encodings.
    """
    if not n:
        return result, []
    import onnx

    from calibration import activation_tensors

    order = activation_tensors(onnx.load(str(fp32_onnx)), "onnxruntime")
    kept = [t for t in order if t in result.amax][:n]
    return dataclasses.replace(result, amax={k: v for k, v in result.amax.items() if k not in kept}), kept


def _refine(result, fp32_onnx, plan: CalibrationPlan, threads: int | None, progress: bool | None):
    """(result with refined amax values, the refinement report as a dict) on the first
    plan.refine_images calibration images."""
    import numpy as np

    from calibration import refine_amax

    n = min(plan.refine_images, len(plan.dataset))
    images = np.stack([plan.dataset[i][0] for i in range(n)])
    amax, report = refine_amax(str(fp32_onnx), result, images, threads=threads,
                               bias_correction=plan.bias_correction, progress=progress)
    return dataclasses.replace(result, amax=amax), report.to_dict()
