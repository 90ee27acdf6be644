"""Build a TensorRT plan from an fp32, fp16 or Q/DQ ONNX file (TensorRT 10.x/11.x Python API).

TensorRT 11 is strongly typed only (no FP16/INT8 builder flags, no calibrators), so precision comes
from the ONNX graph itself and the network is built STRONGLY_TYPED on 10.x as well: one code path
for both. One optimization profile covers the batch range [min_batch, max_batch].
"""
from __future__ import annotations

from pathlib import Path

from engine.backends.base import RunnerError
from engine.backends.tensorrt.device import import_tensorrt
from engine.backends.tensorrt.runner import INPUT


def build_plan(onnx_path, plan_path, input_size: int, min_batch: int = 1, opt_batch: int = 32,
               max_batch: int = 256, workspace_gib: float = 4.0, tf32: bool = False, trt=None) -> Path:
    """Parse `onnx_path` into a strongly typed network and write the serialized plan atomically."""
    from kernels.io import atomic_write_bytes

    trt = trt or import_tensorrt()
    if not 1 <= min_batch <= max_batch:
        raise RunnerError(f"TensorRT batch range [{min_batch}, {max_batch}] is empty; "
                          "expected 1 <= min_batch <= max_batch")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    # 10.x: the flag is a bit; 11.x keeps the member (deprecated, networks are always strong).
    network = builder.create_network((1 << int(strongly_typed)) if strongly_typed is not None else 0)
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
        raise RunnerError(f"TensorRT failed to build a plan from {onnx_path}; rerun with TensorRT's verbose log")
    return atomic_write_bytes(plan_path, bytes(plan))
