"""The Runner interface and the factory that picks a backend."""
from __future__ import annotations

import abc
import importlib.util

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")


class RunnerError(RuntimeError):
    """A runner that cannot be built or used as asked."""


class Runner(abc.ABC):
    """Activate once, infer many batches, deactivate. Also a context manager."""

    name: str = "runner"
    device: str = "cpu"

    def __init__(self):
        self.is_active = False

    def activate(self) -> "Runner":
        if not self.is_active:
            self._activate()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, batch):
        """(N, 3, S, S) float32 array -> (N, F) float32 features (NumPy; CuPy on GPU runners)."""
        if not self.is_active:
            raise RunnerError(f"{self.name} runner used before activate(); use it as `with runner:`")
        return self._infer(batch)

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    @abc.abstractmethod
    def _activate(self) -> None: ...

    @abc.abstractmethod
    def _infer(self, batch): ...

    def _deactivate(self) -> None:
        pass


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def available_backends() -> list[str]:
    """Backends whose Python packages are importable here (a GPU is checked when they activate)."""
    out = ["onnxruntime"] if _has("onnxruntime") else []
    if _has("tensorrt") and _has("cupy"):
        out.append("tensorrt")
    if _has("torch"):
        out.append("torch")
    return out


def resolve_backend(backend: str) -> str:
    """'auto' means TensorRT when it and a CUDA GPU are usable, else ONNX Runtime."""
    if backend not in BACKENDS:
        raise RunnerError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend != "auto":
        if backend == "tensorrt" and "tensorrt" not in available_backends():
            raise RunnerError(
                "backend 'tensorrt' needs the tensorrt and cupy packages and an NVIDIA GPU: "
                "pip install 'otl[gpu]' (TensorRT wheels come from NVIDIA's index), or use --backend onnxruntime"
            )
        return backend
    if "tensorrt" in available_backends():
        from engine.runners.tensorrt import cuda_device_count

        if cuda_device_count() > 0:
            return "tensorrt"
    return "onnxruntime"


def make_runner(backend: str, path, **options) -> Runner:
    """A runner for an ONNX file (onnxruntime), a TensorRT plan (tensorrt) or a torch module (torch)."""
    backend = resolve_backend(backend)
    if backend == "onnxruntime":
        from engine.runners.onnxruntime import OnnxRuntimeRunner

        return OnnxRuntimeRunner(path, **options)
    if backend == "tensorrt":
        from engine.runners.tensorrt import TensorRTRunner

        return TensorRTRunner(path, **options)
    from engine.runners.torch import TorchRunner

    return TorchRunner(path, **options)
