"""Shared test helpers, imported as `from helpers import ...` (tests/ is on sys.path through its
conftest.py): paths of ../shared, the tiny build recipe, the torch and ONNX Runtime references."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CLOTHING = SHARED / "data" / "clothing"
MOBILENET_WEIGHTS = SHARED / "weights" / "torchvision" / "mobilenet_v2-b0353104.pth"

# Tiny but real: a random-init DenseNet-121 cut after transition1 on 64x64 inputs, the full map
# (128 x 8 x 8 = 8,192 features: pool "none", the reference's recipe).
TINY = dict(model="densenet121", cut="transition1", weights="random", input_size=64, pool="none")


def needs_shared(*paths: Path):
    """Skip when ../shared is absent; with OTL_REQUIRE_SHARED=1 (CI, which has it) fail instead, so a
    moved path cannot turn the real-data tests into silent skips."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing and os.environ.get("OTL_REQUIRE_SHARED") == "1":
        raise FileNotFoundError(f"OTL_REQUIRE_SHARED=1 but {', '.join(missing)} is absent: the real-data tests "
                                "cannot run; put ../shared beside the checkout")
    return pytest.mark.skipif(bool(missing), reason=f"needs ../shared ({', '.join(missing)} absent)")


def torch_features(cfg, x: np.ndarray) -> np.ndarray:
    """The torch reference: the cut module (with the recipe's pooling) on a float32 NCHW batch."""
    import torch

    from engine.backbones import build_cut

    module, _ = build_cut(cfg.model, cfg.cut, cfg.weights, cfg.seed, pool=cfg.pool or "none",
                          input_size=cfg.input_size)
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))).numpy()


def ort_features(path, x: np.ndarray, threads: int = 2) -> np.ndarray:
    """An ONNX file (path, or an onnx.ModelProto) run by the project's ONNX Runtime runner."""
    import tempfile

    from engine.backends import make_runner

    if not isinstance(path, (str, Path)):  # a ModelProto: through a temporary file
        with tempfile.TemporaryDirectory() as d:
            f = Path(d) / "model.onnx"
            f.write_bytes(path.SerializeToString())
            return ort_features(f, x, threads)
    with make_runner("onnxruntime", path, threads=threads) as r:
        return r.infer(np.ascontiguousarray(x, dtype=np.float32))
