"""TensorRT engines: build a plan from an fp32, fp16 or Q/DQ ONNX file, run it with CuPy buffers.

Written against TensorRT's 10.x/11.x Python API. TensorRT 11 is strongly typed only (no FP16/INT8
builder flags, no calibrators), so precision comes from the ONNX graph itself and the network is
built STRONGLY_TYPED on 10.x as well: one code path for both. I/O is by tensor name
(set_input_shape / set_tensor_address / execute_async_v3), one optimization profile for the
batch range. Nothing here is imported until a GPU engine is built or run.
"""
from __future__ import annotations

import os
from pathlib import Path

from engine.runners.base import Runner, RunnerError

INPUT, OUTPUT = "images", "features"


def _trt():
    try:
        import tensorrt
    except ImportError as e:
        raise RunnerError(
            "TensorRT is not installed: pip install 'otl[gpu]' with NVIDIA's package index "
            "(--extra-index-url https://pypi.nvidia.com), or use --backend onnxruntime"
        ) from e
    return tensorrt


def cuda_device_count() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # no driver, no GPU, no cupy: all mean "no GPU to build for"
        return 0


def device_info() -> dict:
    """What a plan is tied to: TensorRT version, GPU name and compute capability."""
    import cupy

    trt = _trt()
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {"tensorrt": trt.__version__, "gpu": name, "compute_capability": ".".join(map(str, dev.compute_capability))}


def build_plan(onnx_path, plan_path, input_size: int, min_batch: int = 1, opt_batch: int = 32,
               max_batch: int = 256, workspace_gib: float = 4.0, tf32: bool = False, trt=None) -> Path:
    """Parse `onnx_path` into a strongly typed network and write the serialized engine atomically."""
    from kernels.io import atomic_write_bytes

    trt = trt or _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    flags = (1 << int(strongly_typed)) if strongly_typed is not None else 0  # 11.x: always strong
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    with open(onnx_path, "rb") as f:
        ok = parser.parse(f.read())
    if not ok:
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RunnerError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if not tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32 unless the user asks otherwise
    profile = builder.create_optimization_profile()
    shape = lambda b: (b, 3, input_size, input_size)  # noqa: E731
    profile.set_shape(INPUT, shape(min_batch), shape(min(max(opt_batch, min_batch), max_batch)), shape(max_batch))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RunnerError(f"TensorRT failed to build an engine from {onnx_path}; rerun with TensorRT's verbose log")
    return atomic_write_bytes(plan_path, bytes(plan))


class TensorRTRunner(Runner):
    """Runs a serialized plan. Input may be NumPy (copied to the GPU) or CuPy; output is CuPy."""

    name = "tensorrt"
    device = "cuda"

    def __init__(self, plan_path, expected: dict | None = None, trt=None, xp=None, **_ignored):
        super().__init__()
        self.plan_path = str(plan_path)
        if not os.path.isfile(self.plan_path):
            raise RunnerError(f"TensorRT plan {self.plan_path} does not exist; build it with `otl engines --backend tensorrt`")
        self.expected = expected  # device_info() recorded in the manifest when the plan was built
        self._trt_mod, self._xp = trt, xp

    def _activate(self) -> None:
        trt = self._trt_mod or _trt()
        if self._xp is None:
            import cupy

            self._xp = cupy
        if self.expected is not None:
            here = device_info()
            stale = {k: (v, here.get(k)) for k, v in self.expected.items() if here.get(k) != v}
            if stale:
                raise RunnerError(
                    f"TensorRT plan {self.plan_path} was built for {self.expected}, this machine has {here}; "
                    "plans are tied to the TensorRT version and GPU: rebuild with `otl engines --backend tensorrt`"
                )
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        with open(self.plan_path, "rb") as f:
            self.engine = self._runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RunnerError(f"TensorRT could not load {self.plan_path}: corrupt, or built by another TensorRT version")
        self.context = self.engine.create_execution_context()
        xp = self._xp
        self.stream = xp.cuda.Stream(non_blocking=True) if hasattr(xp, "cuda") else None

    def _infer(self, batch):
        import contextlib

        xp = self._xp
        # Copies, allocations and the launch share one stream: a non-blocking stream does not
        # wait for the legacy default stream, so mixing them would race.
        with self.stream if self.stream is not None else contextlib.nullcontext():
            x = xp.ascontiguousarray(xp.asarray(batch, dtype=xp.float32))
            self.context.set_input_shape(INPUT, tuple(x.shape))
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
        self.context = self.engine = self._runtime = None


def _ptr(a) -> int:
    data = getattr(a, "data", None)
    return int(data.ptr) if hasattr(data, "ptr") else int(a.ctypes.data)  # CuPy, or NumPy in contract tests
