"""ONNX export vs torch, fp16 graph, build folders (manifest, caching, interruption), the CLI."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from engine.artifacts import ArtifactError, read_manifest
from engine.build import BuildError, BuildConfig, make_build
from engine.backends import RunnerError, available_backends, make_runner
from engine.build_folder import Build

from helpers import REPO, TINY, torch_features


def test_onnx_fp32_matches_torch(tiny_engine):
    res, cfg = tiny_engine
    model = onnx.load(res["onnx"])
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 17
    x = np.random.default_rng(0).standard_normal((5, 3, 64, 64), dtype=np.float32)  # batch 5: dynamic axis
    ref = torch_features(cfg, x)
    with make_runner("onnxruntime", res["artifact"], threads=2) as r:
        got = r.infer(x)
        one = r.infer(x[:1])
    scale = np.abs(ref).max()
    assert got.shape == ref.shape == (5, 8192)
    assert np.abs(got - ref).max() <= 1e-4 * scale
    assert np.abs(one - ref[:1]).max() <= 1e-4 * scale


# fp16 keeps 11 significant bits; through this cut's 14 convs the measured error is 5.1e-4 of the
# output scale (seeds 1-3: 4.9-5.7e-4) and 99.994 % of the feature signs agree. Pinned at ~1.5x.
FP16_TOL = 8e-4


def test_fp16_graph_agrees_with_fp32(tmp_path, tiny_engine):
    res32, cfg = tiny_engine
    res = make_build(BuildConfig(**TINY, precision="fp16", backend="onnxruntime", out=str(tmp_path / "b16")))
    assert res["emulated"] and res["precision"] == "fp16"
    model = onnx.load(res["onnx"])
    inits = {i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in inits  # the graph body is fp16 ...
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # ... its I/O fp32
    x = np.random.default_rng(1).standard_normal((4, 3, 64, 64), dtype=np.float32)
    with make_runner("onnxruntime", res["artifact"]) as r16, make_runner("onnxruntime", res32["artifact"]) as r32:
        a, b = r16.infer(x), r32.infer(x)
    assert a.dtype == np.float32
    assert np.abs(a - b).max() <= FP16_TOL * np.abs(b).max()
    assert np.mean((a > 0) == (b > 0)) > 0.999
    m = read_manifest(tmp_path / "b16")
    assert m["emulated"] is True and m["precision"] == "fp16"


def test_build_is_cached_and_manifest_complete(tiny_engine):
    res, cfg = tiny_engine
    assert res["rebuilt"]
    again = make_build(cfg)
    assert again["rebuilt"] is False and again["artifact"] == res["artifact"]
    m = read_manifest(Path(res["build_dir"]))
    for k in ("key", "model", "cut", "weights", "precision", "preprocess", "files", "versions", "input"):
        assert k in m
    assert m["weights"]["id"] == "random:seed=0" and m["cut"]["features"] == 8192
    assert m["preprocess"]["crop_size"] == 64 and m["versions"]["torch"]
    assert all(len(f["sha256"]) == 64 for f in m["files"].values())


def test_changed_request_rebuilds(tmp_path):
    out = tmp_path / "b"
    cfg = BuildConfig(model="densenet121", cut="pool0", weights="random", input_size=32, out=str(out),
                       backend="onnxruntime")
    k1 = read_manifest(Path(make_build(cfg)["build_dir"]))["key"]
    cfg.seed = 1
    res = make_build(cfg)
    assert res["rebuilt"] and read_manifest(out)["key"] != k1


def _small(out, **kw) -> BuildConfig:
    return BuildConfig(model="densenet121", cut="pool0", weights="random", input_size=32, out=str(out),
                       backend="onnxruntime", **kw)


@pytest.fixture(scope="module")
def _small_built(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "b"
    make_build(_small(out))
    return out


@pytest.fixture
def small_build(_small_built, tmp_path) -> Path:
    """tmp_path / "b": a copy of a small build made once (copying takes milliseconds, building seconds)."""
    import shutil

    return Path(shutil.copytree(_small_built, tmp_path / "b"))


def _features(out) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    with Build(out).runner() as r:
        return r.infer(x)


def _boom(*a, **k):
    raise KeyboardInterrupt  # what SIGINT raises: not an Exception, so nothing may swallow it


@pytest.mark.parametrize("where", ["_build_artifact", "write_manifest"])
def test_failed_rebuild_leaves_the_previous_build_whole(tmp_path, small_build, monkeypatch, where):
    import engine.build as b

    out = small_build
    before, manifest = _features(out), (out / "manifest.json").read_text()
    monkeypatch.setattr(b, where, _boom)
    with pytest.raises(KeyboardInterrupt):
        make_build(_small(out, seed=1, force=True))  # another build, failing late
    assert (out / "manifest.json").read_text() == manifest
    Build(out, verify=True)
    np.testing.assert_array_equal(_features(out), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staged folder, no lock file left
    monkeypatch.undo()
    monkeypatch.setenv("OTL_OFFLINE", "1")
    assert make_build(_small(out))["rebuilt"] is False  # the previous build is still the current one


def test_rebuild_replaces_the_folder_and_records_no_staging_path(tmp_path, small_build):
    out = small_build
    (out / "stray.txt").write_text("left by an earlier version")
    res = make_build(_small(out, seed=1))
    assert res["rebuilt"] and res["build_dir"] == str(out) and Path(res["artifact"]).parent == out
    assert not (out / "stray.txt").exists()  # the whole folder is the new build
    text = (out / "manifest.json").read_text()
    assert ".build-" not in text and str(tmp_path) not in text  # paths relative to the folder
    Build(out, verify=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_refuses_to_replace_a_folder_that_is_not_a_build(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match=r"mine exists and is not an otl artifact.*choose another --out"):
        make_build(_small(out))
    assert (out / "notes.txt").read_text() == "keep me"


def test_refuses_to_swap_over_a_symbolic_link(tmp_path):
    """--out builds/current -> v3: swapping would rename the link away and leave a stale one beside."""
    import os

    from engine.artifacts import staged_folder

    (tmp_path / "v3").mkdir()
    os.symlink("v3", tmp_path / "current")
    with pytest.raises(ArtifactError, match=r"current is a symbolic link \(to v3\).*pass --out .*v3"):
        with staged_folder(tmp_path / "current", "otl-engine"):
            pass
    assert os.readlink(tmp_path / "current") == "v3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["current", "v3"]


def test_the_next_run_removes_what_killed_runs_left(tmp_path, small_build):
    out = small_build
    for name in (".b.build-k1ll3d_0", ".b.zz9_abcd", ".b.v2.build-k1ll3d_0", ".c.build-k1ll3d_0"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.fp32.onnx").write_bytes(b"partial")
    (tmp_path / ".b.lock").write_text("4242\n")  # a killed build's lock file: no longer locked
    assert make_build(_small(out))["rebuilt"] is False  # a run that reuses the build cleans up too
    # ours (staged builds, and stores' staging folders of earlier versions) went; other targets' stay
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.v2.build-k1ll3d_0", ".c.build-k1ll3d_0", "b"]


def test_a_build_killed_between_the_swaps_renames_is_restored(tmp_path, small_build):
    out = small_build
    before = _features(out)
    out.rename(tmp_path / ".b.old")  # swap_in's first rename done, the second not
    assert make_build(_small(out))["rebuilt"] is False
    np.testing.assert_array_equal(_features(out), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def _edit_manifest(folder: Path, edit) -> None:
    m = json.loads((folder / "manifest.json").read_text())
    edit(m)
    (folder / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("path", ["../outside.onnx", "/etc/hostname", "sub/../../outside.onnx"])
def test_a_manifest_naming_a_path_outside_its_build_is_refused(tmp_path, small_build, capsys, path):
    from engine import cli

    (tmp_path / "outside.onnx").write_bytes((small_build / "model.fp32.onnx").read_bytes())
    _edit_manifest(small_build, lambda m: m["files"]["onnx_fp32"].update(path=path))
    with pytest.raises(ArtifactError, match=r"build manifest .*\(onnx_fp32\) names the path .*expected a path "
                                            r"relative to the folder, inside it"):
        Build(small_build)
    assert cli.main(["featurize", "--build", str(small_build), "--out", str(tmp_path / "s"), "--json"]) == 2
    assert "expected a path relative to the folder" in json.loads(capsys.readouterr().out)["error"]


def test_a_symlink_leading_out_of_the_build_is_refused(tmp_path, small_build):
    outside = tmp_path / "outside.onnx"
    (small_build / "model.fp32.onnx").rename(outside)
    (small_build / "model.fp32.onnx").symlink_to(outside)
    with pytest.raises(ArtifactError, match=r"leads outside the folder .* through a symbolic link"):
        Build(small_build)
    (small_build / "model.fp32.onnx").unlink()
    outside.rename(small_build / "model.fp32.onnx")
    _edit_manifest(small_build, lambda m: m.update(artifact="../outside.onnx"))
    with pytest.raises(ArtifactError, match=r"\(artifact\) names the path '../outside.onnx'"):
        read_manifest(small_build, verify_files=False)


def test_a_second_build_into_a_locked_folder_exits_2(tmp_path, capsys):
    import os

    from engine import cli
    from engine.artifacts import target_lock

    out = tmp_path / "b"
    with target_lock(out, "otl engines is building"):  # as a running build holds it
        code = cli.main(["engines", "--model", "densenet121", "--cut", "pool0", "--weights", "random",
                         "--input-size", "32", "--backend", "onnxruntime", "--out", str(out), "--json"])
    assert code == 2
    err = json.loads(capsys.readouterr().out)["error"]
    assert f"another otl engines is building {out} (pid {os.getpid()}); wait for it or use another --out" in err
    assert not out.exists() and not list(tmp_path.iterdir())  # refused before anything was written


def test_truncated_engine_file_is_refused(tmp_path):
    out = tmp_path / "b"
    res = make_build(BuildConfig(model="densenet121", cut="pool0", weights="random", input_size=32,
                                    out=str(out), backend="onnxruntime"))
    with open(res["artifact"], "r+b") as f:
        f.truncate(100)
    with pytest.raises(ArtifactError, match=r"missing or has another size"):
        Build(out)


@pytest.mark.parametrize("field,value,match", [
    ("precision", "int4", r"unknown precision 'int4'; expected one of fp32, fp16, int8"),
    ("backend", "openvino", r"unknown backend 'openvino'; expected one of auto, onnxruntime, tensorrt, torch"),
])
def test_bad_requests(field, value, match):
    cfg = BuildConfig(**TINY)
    setattr(cfg, field, value)
    with pytest.raises(BuildError, match=match):
        make_build(cfg)


@pytest.mark.skipif("tensorrt" in available_backends(), reason="tensorrt and cupy are importable here")
def test_tensorrt_requested_without_tensorrt(tmp_path):
    with pytest.raises(RunnerError, match=r"tensorrt.*otl\[gpu\].*--backend onnxruntime"):
        make_build(BuildConfig(**TINY, backend="tensorrt", out=str(tmp_path / "b")))
    assert not (tmp_path / "b").exists()  # refused before anything is written


def _otl(*args, env=None):
    import os

    env = dict(os.environ, OTL_OFFLINE="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "engine.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=600)


def test_cli_engines_json_prints_one_object(tiny_engine):
    res, cfg = tiny_engine
    p = _otl("engines", "--model", cfg.model, "--cut", cfg.cut, "--weights", "random", "--input-size", "64",
             "--pool", "none", "--backend", "onnxruntime", "--out", res["build_dir"], "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)  # exactly one JSON object, nothing else on stdout
    assert {"onnx", "artifact", "precision", "backend", "timings"} <= out.keys()
    assert out["rebuilt"] is False and out["timings"]["total"] > 0


def test_cli_errors_are_clear_and_json():
    p = _otl("engines", "--model", "alexnet", "--json")
    assert p.returncode == 2
    assert "unknown model 'alexnet'" in json.loads(p.stdout)["error"]
    assert "unknown model 'alexnet'" in p.stderr


def test_cli_cuts():
    p = _otl("cuts", "densenet169", "--pool", "none", "--input-size", "224", "--json")
    assert p.returncode == 0, p.stderr
    rows = {r["cut"]: r for r in json.loads(p.stdout)["cuts"]}
    assert rows["denseblock4.12"]["features"] == 50176  # the reference's full map, 1024 x 7 x 7
    assert rows["transition1"]["shape"] == [128, 28, 28] and rows["transition1"]["features"] == 128 * 28 * 28
    assert rows["denseblock4.12"]["default"] and sum(r["default"] for r in rows.values()) == 1
    p = _otl("cuts", "densenet169", "--json")
    assert p.returncode == 0, p.stderr  # the default recipe: a 288 input and a 3 x 3 average
    rows = {r["cut"]: r for r in json.loads(p.stdout)["cuts"]}
    assert rows["denseblock4.12"]["shape"] == [1024, 9, 9]
    assert rows["denseblock4.12"]["features"] == 1024 * 9 and rows["denseblock4.12"]["pool"] == "avg3"
