"""TensorRT: a plan built from the build's ONNX file, run with CuPy buffers on an NVIDIA GPU.

builder.py builds the plan (strongly typed: precision comes from the graph), runner.py runs it,
device.py records and checks what a plan is tied to (TensorRT version, GPU, compute capability).
int8 uses the `tensorrt` Q/DQ encoding (signed int8, zero point 0).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from engine.backends.base import RunnerError

NAME = "tensorrt"
BUILDS = True
INT8_ENCODING = "tensorrt"
UNAVAILABLE = ("backend 'tensorrt' needs the tensorrt and cupy packages and an NVIDIA GPU: "
               "pip install 'otl[gpu]' (TensorRT wheels come from NVIDIA's index), or use --backend onnxruntime")


def available() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("tensorrt", "cupy"))


def usable() -> bool:
    from engine.backends.tensorrt.device import cuda_device_count

    return available() and cuda_device_count() > 0


def build_artifact(onnx_path: Path, out: Path, precision: str, input_size: int, opt_batch: int,
                   max_batch: int) -> tuple[Path, dict, dict]:
    from engine.backends.tensorrt.builder import build_plan
    from engine.backends.tensorrt.device import device_info

    plan = build_plan(onnx_path, Path(out) / f"model.{precision}.plan", input_size,
                      opt_batch=opt_batch, max_batch=max_batch)
    return plan, {"plan": plan}, {"device": device_info()}


def artifact_path(root: Path, manifest: dict) -> Path:
    files = manifest["files"]
    if "plan" not in files:
        raise RunnerError(f"{root} was built for {manifest['backend']}, it has no TensorRT plan; "
                          "rebuild it with `otl engines --backend tensorrt`")
    return Path(root) / files["plan"]["path"]


def runner_options(manifest: dict, threads: int | None) -> dict:
    return {"expected": manifest.get("device")}


def emulated(precision: str) -> bool:
    return False


def make_runner(path, **options):
    from engine.backends.tensorrt.runner import TensorRTRunner

    return TensorRTRunner(path, **options)
