"""int8 engines: pick calibration images, run our entropy calibrator, write both Q/DQ encodings.

calibration/ does the numerics (histograms via torch hooks, KL thresholds, Q/DQ insertion); this
module decides which images it sees and what the cache key holds, so that a cache made for other
weights, another cut, input size, preprocessing or image set is never used.
"""
from __future__ import annotations

import dataclasses
import hashlib
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
        """What the calibration cache depends on (keep_fp32 changes the Q/DQ files, not the scales)."""
        return {"model": self.model, "cut": self.cut, "weights": self.weights_id, "method": self.method,
                "images": self.image_list_hash, "num_images": len(self.dataset), "preprocess": self.preprocess,
                "data": self.source.get("file_list_hash")}


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
    h = hashlib.sha256()
    if hasattr(ds, "paths"):
        root = Path(splits.source["root"])
        for p in ds.paths:
            h.update(f"{Path(p).resolve().relative_to(root).as_posix()}\t{Path(p).stat().st_size}\n".encode())
    else:  # digits: the pixels themselves
        h.update(ds.images.tobytes())
    return CalibrationPlan(
        dataset=ds, asked=cfg.calibration_images, method=cfg.calibration_method, source=splits.source,
        image_list_hash=h.hexdigest(), weights_id=weights_id, cut=cut_name, model=cfg.model, preprocess=preprocess.to_dict(),
        keep_fp32=cfg.keep_fp32, bias_correction=cfg.bias_correction, refine_images=cfg.refine_images,
    )


def build_int8(module, fp32_onnx, out: Path, plan: CalibrationPlan, cfg) -> tuple[dict, dict]:
    """Calibrate (or reuse a matching cache) and write the Q/DQ files. Returns (files, manifest part)."""
    import warnings

    import torch

    from calibration.collect import calibrate
    from calibration.qdq import write_qdq_models
    from engine.data import iter_batches

    if len(plan.dataset) < plan.asked:
        warnings.warn(f"int8 calibration: {len(plan.dataset)} images available, fewer than the "
                      f"{plan.asked} asked (--calibration-images); thresholds may be less reliable")
    batches = (torch.from_numpy(x) for x, _, _ in
               iter_batches(plan.dataset, cfg.batch_size, progress=False if not cfg.verbose else None,
                            desc="calibration"))
    result = calibrate(module, batches, str(fp32_onnx), method=plan.method, num_images=len(plan.dataset),
                       cache_path=out / CALIBRATION_CACHE, cache_key=plan.key_parts())
    kept = []
    if plan.keep_fp32:
        # The first layers are the most sensitive: an error there propagates through every layer
        # after it (MobileNetV2 on real photos: the first two activations alone carry a third of
        # the int8 feature error). Dropping their thresholds leaves those tensors in fp32.
        import onnx

        from calibration.qdq import activation_tensors

        order = activation_tensors(onnx.load(str(fp32_onnx)), "onnxruntime")
        kept = [t for t in order if t in result.thresholds][: plan.keep_fp32]
        result = dataclasses.replace(result, thresholds={k: v for k, v in result.thresholds.items() if k not in kept})
    refine = None
    if plan.refine_images:
        import numpy as np

        from calibration.refine import refine_thresholds

        n = min(plan.refine_images, len(plan.dataset))
        images = np.stack([plan.dataset[i][0] for i in range(n)])
        thresholds, report = refine_thresholds(str(fp32_onnx), result, images, threads=cfg.threads,
                                               bias_correction=plan.bias_correction,
                                               progress=False if not cfg.verbose else None)
        result = dataclasses.replace(result, thresholds=thresholds)
        refine = report.to_dict()
    paths = write_qdq_models(str(fp32_onnx), result, out, bias_correction=plan.bias_correction)
    files = {"onnx_int8_tensorrt": paths["tensorrt"], "onnx_int8_onnxruntime": paths["onnxruntime"],
             "trt_calibration_cache": paths["trt_cache"], "calibration_cache": out / CALIBRATION_CACHE}
    summary = {"tensors": len(result.thresholds), "images": result.num_images, "method": result.method,
               "seconds": round(result.seconds, 3), "version": result.version, "kept_fp32": kept,
               "bias_correction": plan.bias_correction, "refine": refine}
    return files, {"summary": summary, "source": {k: plan.source.get(k) for k in ("kind", "root", "file_list_hash")},
                   "image_list_hash": plan.image_list_hash}
