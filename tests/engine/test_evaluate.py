"""The split travels with the model: evaluate scores exactly the fit's held-out split and refuses
data that changed since, or a split that overlaps training."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from engine.evaluate import SplitMismatchError
from engine.evaluate import EvaluateConfig, evaluate
from engine.train import FitConfig, fit


def _photos(root: Path, n_per_class=12, classes=("red", "green", "blue"), seed=0) -> Path:
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        for i in range(n_per_class):
            px = rng.integers(0, 60, (24, 24, 3))
            px[..., c] += 150  # the class is the dominant channel
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(px.astype(np.uint8)).save(root / name / f"{i:02d}.png")
    return root


@pytest.fixture
def fitted(tiny_engine, tmp_path):
    res, _ = tiny_engine
    data = _photos(tmp_path / "photos")
    model = tmp_path / "m.npz"
    _, s = fit(FitConfig(build=res["build_dir"], data=str(data), n_components=300, projection="sim", seed=3, test_fraction=0.25,
                         out=str(model), progress=False, workers=0))
    return data, model, s


def test_evaluate_rescores_the_fits_own_test_split(fitted):
    data, model, s = fitted
    assert s["split"]["seed"] == 3 and s["split"]["trained_on"] == ["train"] and s["n_test"] == 9
    ev = evaluate(EvaluateConfig(model, workers=0, progress=False))  # no --data, no --seed: the recorded ones
    assert ev["split_checked"] and ev["n"] == s["n_test"]
    assert ev["accuracy"] == pytest.approx(s["test_accuracy"])
    # the default seed 0 would be another split of the same folder: refused, not silently scored
    with pytest.raises(SplitMismatchError, match=r"not the one this model held out.*--seed"):
        evaluate(EvaluateConfig(model, data=str(data), seed=0, workers=0, progress=False))


def test_changed_folder_is_refused(fitted):
    data, model, _ = fitted
    (data / "red" / "00.png").unlink()
    with pytest.raises(SplitMismatchError, match=r"files or labels changed since the fit"):
        evaluate(EvaluateConfig(model, workers=0, progress=False))
    ev = evaluate(EvaluateConfig(model, workers=0, progress=False, check=False))  # explicitly other data
    assert not ev["split_checked"] and ev["n"] > 0


def test_split_that_overlaps_training_is_refused(fitted, capsys):
    from engine.cli import main

    _, model, _ = fitted
    with pytest.raises(SplitMismatchError, match=r"the train split overlaps the rows this model was fitted on"):
        evaluate(EvaluateConfig(model, split="train", workers=0))
    assert main(["evaluate", "--model", str(model), "--split", "train", "--json", "--workers", "0"]) == 2
    assert "overlaps the rows this model was fitted on" in json.loads(capsys.readouterr().out)["error"]


def test_validation_merged_into_the_model_is_training(tiny_engine, tmp_path):
    res, _ = tiny_engine
    data = _photos(tmp_path / "photos")
    model = tmp_path / "m.npz"
    _, s = fit(FitConfig(build=res["build_dir"], data=str(data), n_components=300, projection="sim", validation_fraction=0.2,
                         out=str(model), progress=False, workers=0))
    assert s["select"] == "holdout" and s["split"]["trained_on"] == ["train", "validation"]
    assert s["n_final"] == s["n_train"] + s["n_validation"]
    with pytest.raises(SplitMismatchError, match=r"validation split overlaps"):
        evaluate(EvaluateConfig(model, split="validation", workers=0))
    assert evaluate(EvaluateConfig(model, workers=0, progress=False))["accuracy"] == pytest.approx(s["test_accuracy"])


def test_model_written_before_splits_were_recorded_still_evaluates(fitted, tmp_path):
    """A version-1 model file (no split record) evaluates as before, on the data it is given."""
    from engine.model_file import load_npz, save_npz

    data, model, s = fitted
    meta, arrays = load_npz(model)
    for key in ("split", "selection", "n_final"):
        meta.pop(key)
    meta["format_version"] = 1
    old = tmp_path / "old.npz"
    save_npz(old, meta, arrays)
    ev = evaluate(EvaluateConfig(old, data=str(data), seed=3, test_fraction=0.25, workers=0, progress=False))
    assert not ev["split_checked"] and ev["accuracy"] == pytest.approx(s["test_accuracy"])


def test_store_without_validation_fits_and_records_its_split(tiny_engine, tmp_path):
    from engine.cli import main

    res, _ = tiny_engine
    data = _photos(tmp_path / "photos")
    store = tmp_path / "store"
    assert main(["featurize", "--engine", res["build_dir"], "--data", str(data), "--out", str(store),
                 "--quiet", "--workers", "0", "--seed", "3", "--test-fraction", "0.25"]) == 0
    model = tmp_path / "m.npz"
    _, s = fit(FitConfig(features=str(store), n_components=300, projection="sim", progress=False, out=str(model)))
    assert s["select"] == {"ridge": "loo", "logistic": "kfold(5)"}[s["head"]]  # no validation: train chooses
    assert s["split"]["seed"] == 3 and s["split"]["store"] == str(store)
    ev = evaluate(EvaluateConfig(model, workers=0, progress=False))  # through the engine, on the store's recorded split
    assert ev["split_checked"] and ev["accuracy"] == pytest.approx(s["test_accuracy"])
    (data / "green" / "03.png").unlink()  # the folder the store was made from changed since
    with pytest.raises(SplitMismatchError, match=r"changed since the fit"):
        evaluate(EvaluateConfig(model, workers=0, progress=False))
    _photos(data)  # restore it
    direct = fit(FitConfig(build=res["build_dir"], data=str(data), n_components=300, projection="sim", seed=3, test_fraction=0.25,
                           progress=False, workers=0))[1]
    assert s["split"]["split_hashes"] == direct["split"]["split_hashes"]
    assert s["test_accuracy"] == pytest.approx(direct["test_accuracy"])


def test_skipped_images_are_counted_in_the_json(fitted, tmp_path, capsys):
    """Unreadable images and links the scan did not follow are skipped, counted in the JSON, and named."""
    import os

    from engine.cli import main

    _, model, _ = fitted
    other = tmp_path / "other"
    _photos(other / "train", n_per_class=2)
    _photos(other / "test", n_per_class=2, seed=1)
    (other / "test" / "red" / "bad.png").write_bytes(b"not a png")
    os.symlink("gone.png", other / "test" / "green" / "dangling.png")
    args = ["evaluate", "--model", str(model), "--data", str(other), "--no-split-check", "--workers", "0", "--json"]
    assert main(args + ["--quiet"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n"] == 6 and res["skipped_images"]["count"] == 2
    first = res["skipped_images"]["first"]
    assert any("dangling.png: dangling link" in r for r in first) and any("bad.png" in r for r in first)
    assert main(args + ["--quiet", "--strict"]) == 2
    assert "dangling.png" in json.loads(capsys.readouterr().out)["error"]


# --- predict ------------------------------------------------------------------------------------

def _recording_runner(monkeypatch) -> list[int]:
    """The sizes of the batches every build runner is given from now on."""
    from engine.build_folder import Build

    sizes, real = [], Build.runner

    def runner(self):
        r = real(self)
        infer = r.infer
        r.infer = lambda x: (sizes.append(len(x)), infer(x))[1]
        return r

    monkeypatch.setattr(Build, "runner", runner)
    return sizes


def test_predict_reports_bad_images_without_losing_the_others(fitted, tmp_path, monkeypatch):
    import os
    import shutil

    from engine.evaluate import PredictConfig, predict

    data, model, _ = fitted
    folder = tmp_path / "to_classify"
    (folder / "sub").mkdir(parents=True)
    good = [data / "red" / "00.png", data / "green" / "01.png", data / "blue" / "02.png", data / "red" / "05.png"]
    for i, p in enumerate(good):
        shutil.copy(p, folder / ("sub" if i % 2 else ".") / f"{i}.png")
    (folder / "1b_corrupt.png").write_bytes(b"not a png")
    os.symlink("gone.png", folder / "sub" / "2_dangling.png")
    missing = tmp_path / "missing.jpg"
    alone = predict(PredictConfig(str(model), [str(p) for p in sorted(folder.rglob("[0-9].png"))], workers=0))
    sizes = _recording_runner(monkeypatch)
    rows = predict(PredictConfig(str(model), [str(folder), str(missing)], batch_size=2, workers=0))
    assert [Path(r["image"]).name for r in rows] == ["0.png", "1b_corrupt.png", "2.png", "1.png", "2_dangling.png",
                                                     "3.png", "missing.jpg"]  # folder entries sorted, then the file
    errors = {Path(r["image"]).name: r["error"] for r in rows if "error" in r}
    assert "cannot decode image" in errors["1b_corrupt.png"] and "dangling link" in errors["2_dangling.png"]
    assert errors["missing.jpg"].endswith("does not exist")
    ok = [r for r in rows if "error" not in r]
    key = lambda r: Path(r["image"]).name  # noqa: E731
    assert [(key(r), r["class"]) for r in sorted(ok, key=key)] == [(key(r), r["class"]) for r in sorted(alone, key=key)]
    np.testing.assert_allclose([r["score"] for r in sorted(ok, key=key)], [r["score"] for r in sorted(alone, key=key)],
                               rtol=1e-5)
    assert all(r["margin"] >= 0 for r in ok)
    assert sizes and max(sizes) <= 2 and sum(sizes) == 4  # streamed in batches, never all images at once


def test_predict_strict_and_cli(fitted, tmp_path, capsys):
    from engine.cli import main

    data, model, _ = fitted
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"x")
    args = ["predict", "--model", str(model), "--workers", "0", "--json", str(data / "red" / "00.png"), str(bad)]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["errors"] == 1 and out["predictions"][0]["class"] == "red" and "error" in out["predictions"][1]
    assert main(args + ["--strict"]) == 2
    assert "bad.png" in json.loads(capsys.readouterr().out)["error"]
    assert main(args[:-1] + [str(tmp_path / "none.jpg"), "--strict"]) == 2
    assert "none.jpg does not exist" in json.loads(capsys.readouterr().out)["error"]


def test_prediction_margin_is_top_score_minus_runner_up():
    from engine.evaluate import _prediction

    row = _prediction("x.jpg", np.array([0.1, 0.7, -0.2, 0.4]), ["a", "b", "c", "d"])
    assert row["class"] == "b" and row["score"] == pytest.approx(0.7) and row["margin"] == pytest.approx(0.3)


# --- evaluate: per class, moved builds, the data source ------------------------------------------

def test_per_class_accuracy_and_confusion_match_sklearn(fitted, capsys):
    """The reference: predict() on the files of the fit's test split, counted by scikit-learn."""
    from sklearn.metrics import confusion_matrix

    from engine.build_folder import Build
    from engine.cli.train_commands import _print_confusion
    from engine.data import load_splits
    from engine.evaluate import PredictConfig, load_model, predict

    data, model, s = fitted
    ev = evaluate(EvaluateConfig(model, workers=0, progress=False))
    build = Build(load_model(model).meta["build_dir"])
    test = load_splits(data, build.preprocess, test_fraction=0.25, seed=3).test
    rows = predict(PredictConfig(str(model), [str(p) for p in test.paths], workers=0))
    classes = ev["confusion"]["classes"]
    want = confusion_matrix([test.classes[y] for y in test.labels], [r["class"] for r in rows], labels=classes)
    assert classes == ["blue", "green", "red"] and want.sum() == ev["n"] == s["n_test"]
    np.testing.assert_array_equal(ev["confusion"]["matrix"], want)
    for i, c in enumerate(classes):
        assert ev["per_class"][c] == {"n": int(want[i].sum()), "accuracy": pytest.approx(want[i, i] / want[i].sum())}
    assert ev["accuracy"] == pytest.approx(np.trace(want) / want.sum())
    _print_confusion(ev)  # what `otl evaluate` prints under its accuracy line
    text = capsys.readouterr().out
    assert "confusion (rows: true, columns: predicted)" in text
    assert all(f"{c:<6}  " + " ".join(f"{v:>6}" for v in row) in text for c, row in zip(classes, want.tolist()))


def test_moved_build_folder_suggests_build(tiny_engine, tmp_path, capsys):
    from engine.cli import main

    res, _ = tiny_engine
    old, new = tmp_path / "build", tmp_path / "moved-build"
    shutil.copytree(res["build_dir"], old)
    data = _photos(tmp_path / "photos", n_per_class=6)
    model = tmp_path / "m.npz"
    _, s = fit(FitConfig(build=str(old), data=str(data), n_components=200, projection="sim", alphas=(1e3,), out=str(model),
                         progress=False, workers=0))
    old.rename(new)
    assert main(["evaluate", "--model", str(model), "--workers", "0", "--json"]) == 2
    err = json.loads(capsys.readouterr().out)["error"]
    assert f"{old.resolve()}, is not there any more" in err and "pass --build NEWPATH" in err
    assert main(["predict", "--model", str(model), "--json", str(data / "red" / "00.png")]) == 2
    assert "pass --build NEWPATH" in json.loads(capsys.readouterr().out)["error"]
    ev = evaluate(EvaluateConfig(model, build=str(new), workers=0, progress=False))
    assert ev["accuracy"] == pytest.approx(s["test_accuracy"])


def test_evaluate_without_data_never_falls_back_on_the_digits(fitted, tmp_path):
    """A folder-trained model whose file records no data folder is refused, not scored on the digits."""
    from engine.model_file import load_npz, save_npz

    data, model, s = fitted
    meta, arrays = load_npz(model)
    meta.pop("split")
    save_npz(tmp_path / "old.npz", meta, arrays)
    with pytest.raises(SplitMismatchError, match=r"trained on classes \['blue', 'green', 'red'\], not on the embedded "
                                                 r"digits.*pass --data DIR"):
        evaluate(EvaluateConfig(tmp_path / "old.npz", workers=0, progress=False))


def test_fit_counts_the_images_it_skipped(tiny_engine, tmp_path, capsys):
    """fit's JSON counts what the scan and the passes over each split dropped."""
    import os

    res, _ = tiny_engine
    data = tmp_path / "photos"
    _photos(data / "train", n_per_class=3)
    _photos(data / "test", n_per_class=2, seed=1)
    (data / "train" / "red" / "bad.png").write_bytes(b"not a png")  # dropped by the pass over train
    os.symlink("gone.png", data / "test" / "green" / "dangling.png")  # dropped by the scan
    with pytest.warns(UserWarning, match="skipped"):
        _, s = fit(FitConfig(build=res["build_dir"], data=str(data), n_components=100, projection="sim", progress=False, workers=0))
    assert s["skipped_images"]["count"] == 2 and s["n_test"] == 6  # 3 classes x 2; the link is not an image
    assert sorted(p.split(":")[0].rsplit("/", 1)[1] for p in s["skipped_images"]["first"]) == ["bad.png", "dangling.png"]
    from engine.cli import main

    store = tmp_path / "store"  # featurize counts them too, records them, and a fit on the store reports them
    args = ["featurize", "--build", res["build_dir"], "--data", str(data), "--out", str(store), "--workers", "0"]
    capsys.readouterr()
    with pytest.warns(UserWarning, match="skipped"):
        assert main(args + ["--quiet", "--json"]) == 0
    f = json.loads(capsys.readouterr().out)["skipped_images"]
    _, s2 = fit(FitConfig(features=str(store), n_components=100, projection="sim", progress=False))
    assert f == s["skipped_images"] and s2["skipped_images"] == f  # the folder's count, through the store
