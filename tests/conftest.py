"""Shared fixtures: the ../shared folder (real photos, ImageNet weights), a tiny engine built once."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CLOTHING = SHARED / "data" / "clothing"
MOBILENET_WEIGHTS = SHARED / "weights" / "torchvision" / "mobilenet_v2-b0353104.pth"

# Tiny but real: a random-init DenseNet-121 cut after transition1 on 64x64 inputs, the full map
# (128 x 8 x 8 = 8,192 features: pool "none", the reference's recipe).
TINY = dict(model="densenet121", cut="transition1", weights="random", input_size=64, pool="none")


def needs_shared(*paths: Path):
    missing = [str(p) for p in paths if not p.exists()]
    return pytest.mark.skipif(bool(missing), reason=f"needs ../shared ({', '.join(missing)} absent)")


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds the shared MobileNetV2 ImageNet weights (symlinked)."""
    if not MOBILENET_WEIGHTS.exists():
        pytest.skip(f"needs {MOBILENET_WEIGHTS}")
    home = tmp_path_factory.mktemp("torch_home")
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    (ckpt / MOBILENET_WEIGHTS.name).symlink_to(MOBILENET_WEIGHTS)
    return home


@pytest.fixture
def with_torch_home(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return torch_home


@pytest.fixture(scope="session")
def tiny_engine(tmp_path_factory):
    """(build summary, EngineConfig) of a tiny fp32 engine, built once per session."""
    from engine.build import EngineConfig, build_engine

    out = tmp_path_factory.mktemp("engines") / "tiny-fp32"
    cfg = EngineConfig(**TINY, precision="fp32", backend="onnxruntime", out=str(out), threads=2)
    return build_engine(cfg), cfg


@pytest.fixture(scope="session")
def _matrix_cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("otl-cache")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, _matrix_cache_dir):
    # Tests never reach the network: a missing weights file must fail at once, not after a timeout.
    monkeypatch.setenv("OTL_OFFLINE", "1")
    # ...and never write the user's cache folder: the OPU matrix cache lives in a session folder.
    monkeypatch.setenv("OTL_CACHE_DIR", str(_matrix_cache_dir))
    yield
