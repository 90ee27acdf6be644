"""ONNX Runtime runner: CPU execution provider, or CUDA when onnxruntime-gpu is installed."""
from __future__ import annotations

import os

import numpy as np

from engine.backends.base import Runner, RunnerError


class OnnxRuntimeRunner(Runner):
    name = "onnxruntime"

    def __init__(self, path, threads: int | None = None, providers: list[str] | None = None,
                 optimized_model_path: str | None = None):
        super().__init__()
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise RunnerError(f"ONNX file {self.path} does not exist; build it with `otl engines`")
        self.threads = threads
        self.providers = providers
        self.optimized_model_path = optimized_model_path
        self.session = None

    def _activate(self) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if self.threads:
            so.intra_op_num_threads = int(self.threads)
            so.inter_op_num_threads = 1
        if self.optimized_model_path:
            so.optimized_model_filepath = self.optimized_model_path
        providers = self.providers
        if providers is None:
            avail = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
        self.session = ort.InferenceSession(self.path, sess_options=so, providers=providers)
        self.device = "cuda" if self.session.get_providers()[0] == "CUDAExecutionProvider" else "cpu"
        self.input_name = self.session.get_inputs()[0].name

    def _infer(self, batch):
        if not isinstance(batch, np.ndarray):  # a CuPy batch: ORT's numpy API needs host memory
            batch = batch.get()
        return self.session.run(None, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    def _deactivate(self) -> None:
        self.session = None
