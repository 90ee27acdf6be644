"""Fault injection: `otl engines`, `otl featurize` and `otl fit` SIGKILLed at several points, fresh
targets and existing ones, and two builds racing into one folder.

Each run is a real process (`python -m engine.cli`) on a small random-weight build and the embedded
digits, a few seconds each. After a kill the previous artifact must load and give the same output
(or, when the kill came after the swap, the new one, complete); after the next successful run no
staged folder, temporary file or lock file may be left beside the target.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine.build import BuildConfig
from engine.build_folder import Build
from engine.model_file import load_npz
from engine.store import FeatureStore

from helpers import REPO

BUILD_ARGS = ["--model", "densenet121", "--cut", "pool0", "--weights", "random", "--input-size", "32",
              "--backend", "onnxruntime", "--threads", "1"]
# When to kill, as fractions of the time the same command took whole (measured by the fixture): a
# run spends about its first half starting up and resolving, the rest writing (the first kill comes
# while a run is still going even when it is faster than the measured one). With the fresh build's
# kill that makes three points in a build; two each keep the module at 1.5-2 minutes on 2 cores.
FRACTIONS = (0.5, 0.8)


def _env(tmp: Path) -> dict:
    return dict(os.environ, PYTHONPATH=str(REPO), OTL_OFFLINE="1", OTL_CACHE_DIR=str(tmp / "cache"),
                OMP_NUM_THREADS="1")


def _start(tmp: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "engine.cli", *args, "--json", "--quiet"], cwd=REPO,
                            env=_env(tmp), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run(tmp: Path, *args: str) -> dict:
    p = _start(tmp, *args)
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    return json.loads(out)


def _timed_run(tmp: Path, *args: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    res = _run(tmp, *args)
    return res, time.perf_counter() - t0


def _kill_after(p: subprocess.Popen, seconds: float) -> bool:
    """SIGKILL `p` after `seconds`. False when it had finished by then."""
    try:
        p.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    return p.returncode == -signal.SIGKILL


def _leftovers(target: Path) -> list[str]:
    return sorted(p.name for p in target.parent.iterdir() if p.name != target.name)


def _features(build: Path) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    with Build(build, verify=True).runner() as r:
        return r.infer(x)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> dict:
    """A complete build (seed 0) and a feature store and model file made from it, with references."""
    root = tmp_path_factory.mktemp("good")
    build, store, model = root / "builds" / "b", root / "stores" / "s", root / "models" / "m.npz"
    seconds = {
        "engines": _timed_run(root, "engines", *BUILD_ARGS, "--out", str(build))[1],
        "featurize": _timed_run(root, "featurize", "--build", str(build), "--out", str(store), "--workers", "0",
                                "--threads", "1")[1],
        "fit": _timed_run(root, "fit", "--features", str(store), "--n-components", "64", "--projection", "sim", "--out", str(model))[1],
    }
    return {"root": root, "build": build, "features": _features(build), "store": store,
            "raw": np.array(FeatureStore(store).raw("train")), "model": model, "seconds": seconds}


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    dst.parent.mkdir(parents=True)
    return Path(shutil.copytree(src, dst) if src.is_dir() else shutil.copy2(src, dst))


def test_killed_rebuilds_leave_the_previous_build(good, tmp_path):
    target = _copy(good["build"], tmp_path / "builds" / "b")
    args = ["engines", *BUILD_ARGS, "--seed", "1", "--out", str(target)]
    kills = []
    for fraction in FRACTIONS:  # each kill lands later in a rebuild of the same target
        kills.append(_kill_after(_start(tmp_path, *args), fraction * good["seconds"]["engines"]))
        seed = Build(target, verify=True).manifest["seed"]  # loads, every file's sha256 checked
        if seed == 1:  # the kill came after the swap, or the run ended first: the new build, whole
            break
        np.testing.assert_array_equal(_features(target), good["features"])
    assert any(kills), "no run was killed: the fractions no longer fall inside a build"
    res = _run(tmp_path, *args)
    assert res["rebuilt"] == (seed == 0) and Build(target, verify=True).manifest["seed"] == 1
    assert _leftovers(target) == []


def test_killed_fresh_build_then_racing_builds_end_with_one_whole_build(good, tmp_path):
    target = tmp_path / "builds" / "b"
    p = _start(tmp_path, "engines", *BUILD_ARGS, "--out", str(target))
    if _kill_after(p, 0.75 * good["seconds"]["engines"]) and target.exists():
        Build(target, verify=True)  # no build, or a whole one: never a half-written folder
    # two builds with other settings race into the folder: one wins, the other is refused (or, when
    # it starts after the winner finished, rebuilds it): never a mixture of the two
    procs = {seed: _start(tmp_path, "engines", *BUILD_ARGS, "--seed", str(seed), "--out", str(target))
             for seed in (1, 2)}
    results = {seed: (p.communicate(timeout=300)[0], p.returncode) for seed, p in procs.items()}
    won = [seed for seed, (_, rc) in results.items() if rc == 0]
    for out, rc in results.values():
        assert rc in (0, 2)
        if rc == 2:
            assert "another otl engines is building" in json.loads(out)["error"]
    build = Build(target, verify=True)
    seed = build.manifest["seed"]
    assert won and seed in won and build.manifest["weights"]["id"] == f"random:seed={seed}"
    from helpers import torch_features

    cfg = BuildConfig(model="densenet121", cut="pool0", weights="random", seed=seed, input_size=32,
                      pool=build.manifest["cut"]["pool"])
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32), dtype=np.float32)
    np.testing.assert_allclose(_features(target), torch_features(cfg, x), rtol=1e-4, atol=1e-4)
    assert _leftovers(target) == []


def test_killed_featurize_runs_leave_the_previous_store(good, tmp_path):
    target = _copy(good["store"], tmp_path / "stores" / "s")
    args = ["featurize", "--build", str(good["build"]), "--out", str(target), "--workers", "0",
            "--threads", "1", "--format", "float16"]
    kills = []
    for fraction in FRACTIONS:
        kills.append(_kill_after(_start(tmp_path, *args), fraction * good["seconds"]["featurize"]))
        store = FeatureStore(target)  # checks every file's sha256
        if store.format == "float16":
            break
        np.testing.assert_array_equal(store.raw("train"), good["raw"])
    assert any(kills), "no run was killed: the fractions no longer fall inside a featurize run"
    _run(tmp_path, *args)
    assert FeatureStore(target).format == "float16" and _leftovers(target) == []


def test_killed_fits_leave_the_previous_model_file(good, tmp_path):
    target = _copy(good["model"], tmp_path / "models" / "m.npz")
    args = ["fit", "--features", str(good["store"]), "--n-components", "64", "--projection", "sim", "--seed", "1", "--out", str(target)]
    for fraction in FRACTIONS:
        _kill_after(_start(tmp_path, *args), fraction * good["seconds"]["fit"])
        meta, arrays = load_npz(target)  # the previous file or the new one, never a torn one
        assert meta["format"] == "otl-model" and arrays["coef"].shape[0] == 64
    _run(tmp_path, *args)
    assert load_npz(target)[0]["params"]["seed"] == 1 and _leftovers(target) == []


def test_a_swap_killed_while_removing_the_previous_folder_leaves_only_a_stale_staged_folder(tmp_path, monkeypatch):
    from engine import artifacts

    target = tmp_path / "a"

    def write(version: str) -> None:
        with artifacts.target_lock(target, "a test is writing"), artifacts.staged_folder(target, "test") as tmp:
            (tmp / "v").write_text(version)
            artifacts.write_manifest(tmp, {"kind": "test"})

    def killed(*a, **k):
        raise KeyboardInterrupt

    write("1")
    monkeypatch.setattr(artifacts.shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        write("2")
    monkeypatch.undo()
    assert (target / "v").read_text() == "2"  # swapped in before the kill
    assert [p.name.startswith(".a.build-") for p in tmp_path.iterdir() if p != target] == [True]
    write("3")
    assert (target / "v").read_text() == "3" and _leftovers(target) == []
