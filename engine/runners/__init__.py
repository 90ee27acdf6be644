"""Interchangeable inference runners behind one interface (Polygraphy's activate/infer/deactivate).

    with make_runner("onnxruntime", "model.fp32.onnx", threads=2) as r:
        feats = r.infer(batch)          # (N, 3, S, S) float32 -> (N, F) float32

Backends: onnxruntime (CPU; CUDA provider when onnxruntime-gpu is present), tensorrt (NVIDIA GPU),
torch (the reference). Heavy modules are imported when a runner is activated, not before.
"""
from __future__ import annotations

from engine.runners.base import BACKENDS, Runner, RunnerError, available_backends, make_runner, resolve_backend

__all__ = ["BACKENDS", "Runner", "RunnerError", "available_backends", "make_runner", "resolve_backend"]
