"""Batched featurization and the feature store, against torch features of the same images."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from engine.artifacts import ArtifactError
from engine.backbones import build_cut
from engine.data import load_splits
from engine.featurize import Featurizer
from engine.build_folder import Build
from engine.store import FeatureStore, write_store

from helpers import CLOTHING, MOBILENET_WEIGHTS, needs_shared, torch_features


@pytest.mark.parametrize("fmt", ["float32", "bits"])
def test_store_matches_torch(tiny_engine, tmp_path, fmt):
    res, cfg = tiny_engine
    eng = Build(res["build_dir"], threads=2)
    splits = load_splits(None, eng.preprocess, test_fraction=0.5, seed=0)
    small = {"train": splits.train.select(range(40)), "test": splits.test.select(range(13))}
    with Featurizer(eng, batch_size=16, workers=0, progress=False) as f:
        manifest = write_store(tmp_path / "store", f, small, fmt=fmt, encoder="sign", classes=splits.classes)
    assert manifest["splits"] == {"train": {"rows": 40}, "test": {"rows": 13}}
    store = FeatureStore(tmp_path / "store", build_key=eng.key)
    ref = torch_features(cfg, np.stack([x for x, _ in small["test"]]))
    got = np.concatenate([x for x, _ in store.iter_batches("test", batch_size=5)])
    np.testing.assert_array_equal(store.labels("test"), small["test"].labels)
    if fmt == "float32":
        assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    else:  # bits: sign(x) with exact zeros of the post-ReLU pool agreeing too
        assert got.dtype == np.uint8 and got.shape == ref.shape
        assert np.mean(got == (ref > 0)) > 0.999
        assert store.raw("test").shape == (13, 8192 // 8)  # packed: one bit a feature


def _eight_row_store(tiny_engine, path):
    """(build, splits) after writing an 8-row train store to `path`."""
    res, _ = tiny_engine
    eng = Build(res["build_dir"])
    splits = load_splits(None, eng.preprocess, test_fraction=0.5, seed=0)
    with Featurizer(eng, batch_size=8, workers=0, progress=False) as f:
        write_store(path, f, {"train": splits.train.select(range(8))}, classes=splits.classes)
    return eng, splits


def test_store_from_another_build_is_refused(tiny_engine, tmp_path):
    _eight_row_store(tiny_engine, tmp_path / "s")
    with pytest.raises(ArtifactError, match=r"was made by build .* not by the build asked for"):
        FeatureStore(tmp_path / "s", build_key="0" * 64)


def test_interrupted_store_leaves_previous_intact(tiny_engine, tmp_path):
    eng, splits = _eight_row_store(tiny_engine, tmp_path / "s")

    class Dying:
        build = eng

        def featurize(self, ds, desc=""):
            yield np.zeros((2, 8192), np.float32), np.zeros(2, np.int64)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_store(tmp_path / "s", Dying(), {"train": splits.train}, classes=splits.classes)
    assert FeatureStore(tmp_path / "s").rows("train") == 8
    assert [p.name for p in tmp_path.iterdir()] == ["s"]  # no temporary folder left behind


def test_a_store_replaces_killed_runs_leftovers_and_has_ordinary_permissions(tiny_engine, tmp_path):
    import stat

    for name in (".s.k1ll3d_0", ".s.build-k1ll3d_0"):  # killed featurize runs (earlier and this version)
        (tmp_path / name).mkdir()
        (tmp_path / name / "train.features.bin").write_bytes(b"partial")
    _eight_row_store(tiny_engine, tmp_path / "s")
    assert [p.name for p in tmp_path.iterdir()] == ["s"]
    (tmp_path / "plain").mkdir()
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_featurize_into_a_locked_store_exits_2(tiny_engine, tmp_path, capsys):
    import json
    import os

    from engine import cli
    from engine.artifacts import target_lock

    eng, _ = _eight_row_store(tiny_engine, tmp_path / "s")
    before = (tmp_path / "s" / "manifest.json").read_text()
    with target_lock(tmp_path / "s", "otl featurize is writing"):
        code = cli.main(["featurize", "--build", str(eng.root), "--out", str(tmp_path / "s"), "--workers", "0",
                         "--json", "--quiet"])
    assert code == 2
    err = json.loads(capsys.readouterr().out)["error"]
    assert f"another otl featurize is writing {tmp_path / 's'} (pid {os.getpid()}); wait for it" in err
    assert (tmp_path / "s" / "manifest.json").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_a_same_size_corrupt_store_is_refused_before_fitting(tiny_engine, tmp_path, capsys):
    import json

    from engine import cli

    _eight_row_store(tiny_engine, tmp_path / "s")
    bin_ = tmp_path / "s" / "train.features.bin"
    bin_.write_bytes(bytes(255 - b for b in bin_.read_bytes()))  # same size, other bits
    with pytest.raises(ArtifactError, match=r"train.features.bin \(train.features.bin\) does not match the sha256"):
        FeatureStore(tmp_path / "s")
    assert cli.main(["fit", "--features", str(tmp_path / "s"), "--n-components", "64", "--projection", "sim", "--json", "--quiet"]) == 2
    assert "does not match the sha256" in json.loads(capsys.readouterr().out)["error"]
    assert FeatureStore(tmp_path / "s", verify=False).rows("train") == 8  # sizes alone cannot tell


@pytest.mark.parametrize("edit", ["split", "file"])
def test_a_store_manifest_naming_a_path_outside_its_folder_is_refused(tiny_engine, tmp_path, capsys, edit):
    import json
    import shutil

    from engine import cli

    _eight_row_store(tiny_engine, tmp_path / "s")
    shutil.copytree(tmp_path / "s", tmp_path / "t")
    m = json.loads((tmp_path / "s" / "manifest.json").read_text())
    if edit == "split":  # the reader makes "<split>.features.bin" from the split's name
        m["splits"] = {"../t/train": m["splits"]["train"]}
    else:
        m["files"]["train.labels.npy"]["path"] = "../t/train.labels.npy"
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ArtifactError, match=r"names the path '\.\./t/train.*expected a path relative to the folder"):
        FeatureStore(tmp_path / "s")
    assert cli.main(["fit", "--features", str(tmp_path / "s"), "--n-components", "64", "--projection", "sim", "--json", "--quiet"]) == 2
    assert "expected a path relative to the folder" in json.loads(capsys.readouterr().out)["error"]


def test_preprocessing_mismatch_is_refused(tiny_engine):
    from engine.data import IMAGENET_DEFAULT

    res, _ = tiny_engine
    eng = Build(res["build_dir"])
    splits = load_splits(None, IMAGENET_DEFAULT, test_fraction=0.5)
    with Featurizer(eng, batch_size=8, workers=0, progress=False) as f:
        with pytest.raises(ValueError, match=r"dataset preprocessing .* differs from the build's"):
            next(f.featurize(splits.test))


@pytest.mark.shared
@needs_shared(CLOTHING, MOBILENET_WEIGHTS)
def test_cli_featurize_clothing_with_imagenet_weights(tmp_path, with_torch_home, monkeypatch):
    """`otl featurize` on real photos with ImageNet MobileNetV2: the store equals torch's features."""
    from engine.cli import main

    monkeypatch.chdir(tmp_path)  # the engine is built under ./builds

    data = tmp_path / "clothing"
    for split in ("train", "validation", "test"):
        for cls in ("hat", "shoes", "shorts"):
            dst = data / split / cls
            dst.mkdir(parents=True)
            for p in sorted((CLOTHING / split / cls).glob("*.jpg"))[:3]:
                shutil.copy(p, dst)
    out = tmp_path / "store"
    rc = main(["featurize", "--model", "mobilenet_v2", "--weights", "imagenet", "--data", str(data),
               "--out", str(out), "--format", "float32", "--backend", "onnxruntime", "--quiet", "--workers", "0",
               "--json"])
    assert rc == 0
    store = FeatureStore(out)
    # the default recipe: the 1280 x 9 x 9 map of the 288 input averaged over 3 x 3 bins, inside the engine
    assert store.n_features == 1280 * 3 * 3 and store.classes == ["hat", "shoes", "shorts"]
    eng = Build(store.build_info["build_dir"])
    assert eng.manifest["recipe"] == {"pool": "avg3", "resize": "crop", "input_size": 288}
    splits = load_splits(data, eng.preprocess)
    module, _ = build_cut("mobilenet_v2", None, "imagenet", pool="avg3", input_size=288)
    xs = np.stack([splits.test[i][0] for i in range(len(splits.test))])
    with torch.no_grad():
        ref = module(torch.from_numpy(xs)).numpy()
    got = np.asarray(store.raw("test"))
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()
    assert np.mean((got > 0) == (ref > 0)) > 0.999
