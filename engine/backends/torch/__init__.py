"""torch: the eager reference. Runs a torch module (the cut), not a build folder."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from engine.backends.base import RunnerError

NAME = "torch"
BUILDS = False
INT8_ENCODING = None
UNAVAILABLE = "backend 'torch' needs torch: pip install torch"


def available() -> bool:
    return importlib.util.find_spec("torch") is not None


def usable() -> bool:
    return False  # never what `auto` means: it is the reference, not an engine


def build_artifact(*_args, **_kwargs):
    raise RunnerError("the torch backend is the reference and needs no build; build for onnxruntime or tensorrt")


def artifact_path(root: Path, manifest: dict) -> Path:
    raise RunnerError(f"{root} is a build folder, which runs on onnxruntime or tensorrt; "
                      "the torch reference runs the module (make_runner('torch', module))")


def runner_options(manifest: dict, threads: int | None) -> dict:
    return {"threads": threads}


def emulated(precision: str) -> bool:
    return False


def make_runner(module, **options):
    from engine.backends.torch.runner import TorchRunner

    return TorchRunner(module, **options)
