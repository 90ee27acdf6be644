"""ONNX Runtime: runs the build's ONNX file itself (CPU provider; CUDA with onnxruntime-gpu).

No artifact to build. int8 uses the `onnxruntime` Q/DQ encoding (uint8 activations where a tensor
is non-negative: x86 int8 kernels are fast only with unsigned activations).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

NAME = "onnxruntime"
BUILDS = True
INT8_ENCODING = "onnxruntime"
UNAVAILABLE = "backend 'onnxruntime' needs the onnxruntime package: pip install onnxruntime"


def available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def usable() -> bool:
    return available()


def build_artifact(onnx_path: Path, out: Path, precision: str, input_size: int, opt_batch: int,
                   max_batch: int) -> tuple[Path, dict, dict]:
    return onnx_path, {}, {}


def artifact_path(root: Path, manifest: dict) -> Path:
    from engine.backends import onnx_file_key

    return Path(root) / manifest["files"][onnx_file_key(manifest["precision"], NAME)]["path"]


def runner_options(manifest: dict, threads: int | None) -> dict:
    return {"threads": threads}


def emulated(precision: str) -> bool:
    """fp16 on ONNX Runtime's CPU provider: x86 has no fp16 kernels, casts wrap every node."""
    if precision != "fp16":
        return False
    try:
        import onnxruntime as ort
    except ImportError:
        return True
    return "CUDAExecutionProvider" not in ort.get_available_providers()


def make_runner(path, **options):
    from engine.backends.onnxruntime.runner import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, **options)
