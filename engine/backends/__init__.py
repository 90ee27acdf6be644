"""Backends behind one registry: what `auto` means, which file each backend runs, its runner.

    from engine.backends import make_runner
    with make_runner("onnxruntime", "model.fp32.onnx", threads=2) as r:
        feats = r.infer(batch)          # (N, 3, S, S) float32 -> (N, F) float32

Each backend is a folder (Polygraphy's layout): `onnxruntime/` (runs the build's ONNX file),
`tensorrt/` (builder, runner, device check), `torch/` (the eager reference). A backend package
exposes the same few names (NAME, BUILDS, INT8_ENCODING, available, usable, build_artifact,
artifact_path, runner_options, make_runner, emulated); this module is the only place that chooses between them.
Heavy modules (tensorrt, cupy, onnxruntime) are imported when a runner activates or a plan is
built, not before.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

from engine.backends.base import Runner, RunnerError

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
AUTO_ORDER = ("tensorrt", "onnxruntime")  # what `auto` tries, best first

__all__ = ["AUTO_ORDER", "BACKENDS", "Runner", "RunnerError", "artifact_for_build", "available_backends",
           "backend_module",
           "build_artifact", "buildable", "emulated", "make_runner", "onnx_file_key", "resolve_backend",
           "runner_for_build"]


def backend_module(name: str) -> ModuleType:
    if name not in BACKENDS or name == "auto":
        raise RunnerError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")
    return importlib.import_module(f"engine.backends.{name}")


def available_backends() -> list[str]:
    """Backends whose Python packages are importable here (a GPU is checked when they activate)."""
    return [b for b in BACKENDS[1:] if backend_module(b).available()]


def resolve_backend(name: str) -> str:
    """`auto`: the first of AUTO_ORDER usable here (TensorRT needs a GPU too); a named backend must
    be importable."""
    if name == "auto":
        return next((b for b in AUTO_ORDER if backend_module(b).usable()), "onnxruntime")
    mod = backend_module(name)
    if not mod.available():
        raise RunnerError(mod.UNAVAILABLE)
    return name


def buildable(name: str) -> bool:
    """Whether `otl engines` can build for this backend (`auto` resolves to one that can)."""
    return name == "auto" or backend_module(name).BUILDS


def onnx_file_key(precision: str, backend: str) -> str:
    """The manifest `files` entry of the ONNX graph a backend runs or builds from: one per precision,
    and for int8 the Q/DQ encoding that backend accepts."""
    if precision == "int8":
        return f"onnx_int8_{backend_module(backend).INT8_ENCODING}"
    return f"onnx_{precision}"


def build_artifact(backend: str, onnx_path: Path, out: Path, precision: str, input_size: int,
                   opt_batch: int, max_batch: int) -> tuple[Path, dict, dict]:
    """The file `backend` runs, built from `onnx_path` if it needs building: (artifact, new files
    for the manifest, extra manifest entries)."""
    return backend_module(backend).build_artifact(onnx_path, out, precision, input_size, opt_batch, max_batch)


def emulated(backend: str, precision: str) -> bool:
    """True when `precision` on `backend` here is an accuracy emulation, not a fast path."""
    return backend_module(backend).emulated(precision)


def make_runner(backend: str, path, **options) -> Runner:
    """A runner for an ONNX file (onnxruntime), a TensorRT plan (tensorrt) or a torch module (torch)."""
    return backend_module(resolve_backend(backend)).make_runner(path, **options)


def artifact_for_build(backend: str, root: Path, manifest: dict) -> Path:
    """The file of a build folder that `backend` runs (which need not be the backend it was built
    for: a TensorRT build also holds the ONNX files ONNX Runtime runs)."""
    return backend_module(resolve_backend(backend)).artifact_path(root, manifest)


def runner_for_build(backend: str, root: Path, manifest: dict, threads: int | None = None) -> Runner:
    """A runner for a build folder's artifact on `backend` (see artifact_for_build)."""
    mod = backend_module(resolve_backend(backend))
    return mod.make_runner(artifact_for_build(backend, root, manifest), **mod.runner_options(manifest, threads))
