"""Shared fixtures: the ../shared folder (real photos, ImageNet weights), a tiny engine built once."""
from __future__ import annotations

from pathlib import Path

import pytest

from helpers import CLOTHING, MOBILENET_WEIGHTS, REPO, SHARED, TINY, needs_shared  # noqa: F401


@pytest.fixture(scope="session")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds the shared MobileNetV2 ImageNet weights (symlinked)."""
    needs_shared(MOBILENET_WEIGHTS)  # fails under OTL_REQUIRE_SHARED=1
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
    """(build summary, BuildConfig) of a tiny fp32 engine, built once per session."""
    from engine.build import BuildConfig, make_build

    out = tmp_path_factory.mktemp("engines") / "tiny-fp32"
    cfg = BuildConfig(**TINY, precision="fp32", backend="onnxruntime", out=str(out), threads=2)
    return make_build(cfg), cfg


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
