"""What a TensorRT plan is tied to, and the check that refuses a plan built elsewhere.

A serialized plan is specific to the TensorRT version and the GPU (its compute capability) it was
built on; the build manifest records `device_info()` and the runner compares it before loading.
"""
from __future__ import annotations

from engine.backends.base import RunnerError

REBUILD = "rebuild with `otl engines --backend tensorrt --force`"


def import_tensorrt():
    """The tensorrt module, or a RunnerError that says how to install it."""
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


def device_info(trt=None) -> dict:
    """TensorRT version, GPU name and compute capability ("major.minor") of the current device."""
    import cupy

    trt = trt or import_tensorrt()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    # From the properties, not Device.compute_capability: that is a string ("90", "100") whose
    # characters cannot be split into major and minor.
    return {"tensorrt": trt.__version__, "gpu": name, "compute_capability": f"{props['major']}.{props['minor']}"}


def check_device(plan_path, expected: dict | None, here: dict) -> None:
    """Refuse a plan whose recorded device_info differs from this machine's."""
    if expected is None:
        return
    stale = {k: (v, here.get(k)) for k, v in expected.items() if here.get(k) != v}
    if stale:
        raise RunnerError(f"TensorRT plan {plan_path} was built for {expected}, this machine has {here}; "
                          f"plans are tied to the TensorRT version and GPU: {REBUILD}")
