"""Run a TensorRT plan with CuPy buffers (TensorRT 10.x/11.x Python API).

I/O is by tensor name (set_input_shape / set_tensor_address / execute_async_v3) on one
non-blocking CUDA stream. Nothing here imports tensorrt or cupy until the runner activates.
"""
from __future__ import annotations

import os

from engine.backends.base import Runner, RunnerError
from engine.backends.tensorrt.device import check_device, device_info, import_tensorrt

INPUT, OUTPUT = "images", "features"


class TensorRTRunner(Runner):
    """Runs a serialized plan. Input may be NumPy (copied to the GPU) or CuPy; output is CuPy."""

    name = "tensorrt"
    device = "cuda"

    def __init__(self, plan_path, expected: dict | None = None, trt=None, xp=None):
        super().__init__()
        self.plan_path = str(plan_path)
        if not os.path.isfile(self.plan_path):
            raise RunnerError(f"TensorRT plan {self.plan_path} does not exist; build it with `otl engines --backend tensorrt`")
        self.expected = expected  # device_info() recorded in the manifest when the plan was built
        self._trt_mod, self._xp = trt, xp

    def _activate(self) -> None:
        trt = self._trt_mod or import_tensorrt()
        if self._xp is None:
            import cupy

            self._xp = cupy
        if self.expected is not None:
            check_device(self.plan_path, self.expected, device_info(trt))
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with open(self.plan_path, "rb") as f:
            self.cuda_engine = self._runtime.deserialize_cuda_engine(f.read())
        if self.cuda_engine is None:
            raise RunnerError(f"TensorRT could not load {self.plan_path}: corrupt, or built by another TensorRT version")
        self.context = self.cuda_engine.create_execution_context()
        xp = self._xp
        self.stream = xp.cuda.Stream(non_blocking=True) if hasattr(xp, "cuda") else None

    def _infer(self, batch):
        import contextlib

        xp = self._xp
        # Copies, allocations and the launch share one stream: a non-blocking stream does not
        # wait for the legacy default stream, so mixing them would race.
        with self.stream if self.stream is not None else contextlib.nullcontext():
            x = xp.ascontiguousarray(xp.asarray(batch, dtype=xp.float32))
            if not self.context.set_input_shape(INPUT, tuple(x.shape)):
                raise RunnerError(f"TensorRT plan {self.plan_path} refused an input of shape {tuple(x.shape)}: "
                                  "outside the batch range or input size it was built for (the build manifest's input "
                                  "shape and TensorRT profile); use a smaller --batch-size")
            y = xp.empty(tuple(self.context.get_tensor_shape(OUTPUT)), dtype=xp.float32)
            self.context.set_tensor_address(INPUT, _ptr(x))
            self.context.set_tensor_address(OUTPUT, _ptr(y))
            handle = self.stream.ptr if self.stream is not None else 0
            if not self.context.execute_async_v3(handle):
                raise RunnerError(f"TensorRT execution failed for a batch of shape {tuple(x.shape)}")
        if self.stream is not None:
            self.stream.synchronize()
        return y

    def _deactivate(self) -> None:
        self.context = self.cuda_engine = self._runtime = None


def _ptr(a) -> int:
    data = getattr(a, "data", None)
    return int(data.ptr) if hasattr(data, "ptr") else int(a.ctypes.data)  # CuPy, or NumPy in contract tests
