"""The feature recipe: pooling inside the engine, fitted encoders, streaming statistics, squash resize."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from engine.artifacts import ArtifactError, read_manifest
from engine.backbones import BackboneError, build_cut, check_pool, list_cuts, pool_grid
from engine.build import BuildConfig, make_build
from engine.classifier import EncoderWarning, TransferClassifier
from engine.backends import make_runner
from engine.build_folder import Build
from kernels.encode import (Encoder, EncoderError, FeatureSample, fit_on_first_rows, parse_encoder, rank_error,
                            sample_first_order)

from helpers import REPO, TINY


def _pooled_torch(x: np.ndarray, n: int) -> np.ndarray:
    module, _ = build_cut(TINY["model"], TINY["cut"], TINY["weights"])
    with torch.no_grad():
        maps = module[0](torch.from_numpy(x))
        return torch.nn.functional.adaptive_avg_pool2d(maps, n).flatten(1).numpy()


@pytest.fixture(scope="module")
def pooled_engine(tmp_path_factory):
    out = tmp_path_factory.mktemp("pool") / "tiny-avg3"
    return make_build(BuildConfig(**dict(TINY, pool="avg3"), precision="fp32", backend="onnxruntime", out=str(out)))


def test_pooling_in_the_graph_equals_torch_adaptive_avg_pool(pooled_engine):
    res = pooled_engine
    m = read_manifest(res["build_dir"])
    assert m["recipe"] == {"pool": "avg3", "resize": "crop", "input_size": TINY["input_size"]}
    assert m["key_parts"]["pool"] == "avg3"
    assert res["features"] == 128 * 3 * 3  # transition1 is 128 x 8 x 8 at 64 x 64: 3 x 3 bins overlap
    x = np.random.default_rng(0).standard_normal((5, 3, 64, 64), dtype=np.float32)
    ref = _pooled_torch(x, 3)
    with make_runner("onnxruntime", res["artifact"], threads=2) as r:
        got = r.infer(x)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()


def test_int8_pooled_engine_keeps_the_pool_in_float(tmp_path):
    res = make_build(BuildConfig(**dict(TINY, pool="avg"), precision="int8", backend="onnxruntime",
                                    out=str(tmp_path / "i8"), calibration_images=32))
    from engine.data import load_splits

    eng = Build(res["build_dir"])
    x = np.stack([load_splits(None, eng.preprocess).test[i][0] for i in range(16)])
    ref = _pooled_torch(x, 1)
    with eng.runner() as r:
        got = r.infer(x)
    assert got.shape == (16, 128) and got.dtype == np.float32
    assert np.linalg.norm(got - ref) / np.linalg.norm(ref) < 0.05  # the int8 engines' stated tolerance


def test_pool_specs_and_feature_counts():
    assert [pool_grid(p) for p in ("none", "avg", "avg1", "avg2", "AVG4")] == [0, 1, 1, 2, 4]
    for bad in ("max", "avg0", "avg-1", "avgx", ""):
        with pytest.raises(BackboneError, match="valid: none"):
            pool_grid(bad)
    rows = {r["cut"]: r for r in list_cuts("mobilenet_v2", 224, pool="avg2")}
    assert rows["features.18"]["features"] == 1280 * 4 and rows["features.18"]["pool"] == "avg2"
    rows = {r["cut"]: r for r in list_cuts("mobilenet_v2", 32, pool="avg2")}
    assert rows["features.18"]["features"] is None  # a 1 x 1 map has no 2 x 2 bins


def test_pool_larger_than_the_map_says_what_is_possible(tmp_path):
    with pytest.raises(BackboneError, match=r"at least 9x9.*1280x7x7.*possible: none, avg, avg2 \.\. avg7"):
        check_pool("avg9", "mobilenet_v2", "features.18", (1280, 7, 7), 224)
    out = tmp_path / "never"
    r = subprocess.run([sys.executable, "-m", "engine.cli", "engines", "--model", "mobilenet_v2", "--weights",
                        "random", "--input-size", "224", "--pool", "avg9", "--out", str(out), "--json"],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    err = json.loads(r.stdout)["error"]
    assert "avg9" in err and "avg2 .. avg7" in err
    assert not out.exists()  # refused before anything was exported


# ----------------------------------------------------------------------------- encoders


def test_median_and_quantile_encoders_match_numpy():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.exponential(size=501), rng.normal(3, 2, size=501), rng.integers(0, 4, 501)])
    X = X.astype(np.float32)
    med = parse_encoder("threshold:median").fit(X)
    np.testing.assert_allclose(med.thresholds_, np.median(X.astype(np.float64), axis=0), rtol=1e-6)
    np.testing.assert_array_equal(med(X), (X > np.median(X, axis=0)).astype(np.uint8))
    q = parse_encoder("thresholds:4").fit(X)
    ref = np.quantile(X.astype(np.float64), [0.2, 0.4, 0.6, 0.8], axis=0).T  # (F, Q)
    np.testing.assert_allclose(q.thresholds_, ref, rtol=1e-6)
    bits = q(X)
    assert bits.shape == (501, 3 * 4) and bits.dtype == np.uint8
    want = np.concatenate([(X[:, [f]] > ref[f].astype(np.float32)) for f in range(3)], axis=1)
    np.testing.assert_array_equal(bits, want)  # feature-major: bit j of feature f at column f*Q + j
    # a thermometer: bits of a feature are non-increasing in j, their count is the quantile bin
    b = bits.reshape(501, 3, 4)
    assert (np.diff(b.astype(int), axis=2) <= 0).all()
    np.testing.assert_array_equal(b.sum(2)[:, 1], np.searchsorted(ref[1].astype(np.float32), X[:, 1], side="left"))
    assert Encoder.from_dict(q.to_dict()) == q and q.spec == "thresholds:4"


def test_encoder_needs_statistics_before_use():
    for spec in ("threshold:median", "thresholds:3"):
        with pytest.raises(EncoderError, match="has no thresholds yet: it learns them from training data"):
            parse_encoder(spec)(np.ones((2, 3), np.float32))
    enc = parse_encoder("threshold:median").fit(np.ones((4, 3), np.float32))
    with pytest.raises(EncoderError, match="fitted on 3 features, got input of shape \\(2, 5\\)"):
        enc(np.ones((2, 5), np.float32))


def test_streaming_sample_is_exact_when_it_fits_and_within_its_stated_error_otherwise():
    rng = np.random.default_rng(1)
    X = np.column_stack([rng.lognormal(size=20_000), rng.normal(size=20_000)] +
                        [rng.gamma(k, size=20_000) for k in (0.5, 1, 2, 5)]).astype(np.float32)
    X = X[np.argsort(X[:, 0])]  # adversarial order: a first-rows estimate would be far off
    exact = FeatureSample(30_000)
    for i in range(0, len(X), 777):
        exact.add(X[i:i + 777])
    assert exact.exact and exact.describe()["rank_error"] == 0.0
    np.testing.assert_array_equal(parse_encoder("threshold:median").fit(exact).thresholds_,
                                  np.quantile(X.astype(np.float64), 0.5, axis=0).astype(np.float32))
    s = FeatureSample(1000, seed=3)
    for i in range(0, len(X), 777):
        s.add(X[i:i + 777])
    d = s.describe()
    assert d["rows_seen"] == 20_000 and d["sample_rows"] == 1000 and not d["exact"]
    assert d["rank_error"] == pytest.approx(rank_error(1000), abs=1e-6) and 0.04 < d["rank_error"] < 0.05
    enc = parse_encoder("thresholds:3").fit(s)
    for f in range(X.shape[1]):
        for j, level in enumerate((0.25, 0.5, 0.75)):
            rank = np.mean(X[:, f] <= enc.thresholds_[f, j])
            assert abs(rank - level) <= d["rank_error"], (f, level, rank)


def test_first_rows_in_sample_first_order_are_uniform():
    y = np.repeat(np.arange(10), 500)  # class-sorted, like a folder listing
    X = y[:, None].astype(np.float32) + np.zeros((1, 2), np.float32)
    order = sample_first_order(len(y), 400, seed=0)
    assert sample_first_order(300, 400) is None
    enc = parse_encoder("threshold:median")
    batches = [(X[order[i:i + 32]], y[order[i:i + 32]]) for i in range(0, len(y), 32)]
    out = list(fit_on_first_rows(enc, iter(batches), capacity=400))
    assert sum(len(b[1]) for b in out) == len(y)  # every row comes through, once
    assert 4.0 <= enc.thresholds_[0] <= 5.0  # the median class of 0..9, not of the first classes
    assert enc.stats_["exact"] is False and enc.stats_["rank_error"] > 0
    exact = parse_encoder("threshold:median")  # a stream that ends exactly at the sample's size is exact
    list(fit_on_first_rows(exact, iter([(X[:200], y[:200]), (X[200:400], y[200:400])]), capacity=400))
    assert exact.stats_["exact"] is True and exact.stats_["rank_error"] == 0.0


def test_saved_encoder_gives_the_same_bits_and_predictions(tmp_path):
    rng = np.random.default_rng(2)
    X = np.abs(rng.normal(size=(120, 40))).astype(np.float32) + np.repeat(np.eye(4, 40, 0, np.float32), 30, 0)
    y = np.repeat(np.arange(4), 30)
    Xt = np.abs(rng.normal(size=(40, 40))).astype(np.float32)
    for spec in ("threshold:median", "thresholds:3"):
        clf = TransferClassifier(300, encoder=spec, seed=1).fit(X, y)
        from engine.model_file import load_npz, save_npz

        meta, arrays = clf.state()
        save_npz(tmp_path / "m.npz", meta, arrays)
        back = TransferClassifier.from_state(*load_npz(tmp_path / "m.npz"))
        np.testing.assert_array_equal(back.encoder_(Xt), clf.encoder_(Xt))
        np.testing.assert_array_equal(back.predict(Xt), clf.predict(Xt))
        assert meta["encoder_stats"]["exact"] and meta["encoder_stats"]["rows_seen"] == 120


def test_sign_on_non_negative_features_warns():
    X = np.abs(np.random.default_rng(3).normal(size=(64, 30))).astype(np.float32) + 0.01
    X[:, :2] -= 0.8  # two features with both signs, 28 all positive
    with pytest.warns(EncoderWarning, match="same bit to every training row on 93% of the features"):
        TransferClassifier(100, encoder="sign").fit(X, np.arange(64) % 2)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", EncoderWarning)
        TransferClassifier(100, encoder="threshold:median").fit(X, np.arange(64) % 2)


def test_encoder_none_is_ridge_on_the_features():
    from sklearn.linear_model import RidgeClassifier

    rng = np.random.default_rng(4)
    X, y = rng.normal(size=(80, 12)).astype(np.float32), np.arange(80) % 3
    clf = TransferClassifier(encoder="none", projection="none", alphas=[0.5]).fit(X, y)
    ref = RidgeClassifier(alpha=0.5).fit(X, y)
    np.testing.assert_allclose(clf.decision_function(X), ref.decision_function(X), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="encoder 'none' passes float features on"):
        TransferClassifier(encoder="none", projection="sim").fit(X, y)


# ----------------------------------------------------------------------------- stores


def test_bit_store_keeps_its_fitted_encoder_and_a_float_store_is_re_encoded(tiny_engine, tmp_path):
    from engine.data import load_splits
    from engine.featurize import Featurizer
    from engine.store import FeatureStore, write_store
    from engine.train import FitConfig, fit

    res, _ = tiny_engine
    eng = Build(res["build_dir"])
    sp = load_splits(None, eng.preprocess)
    parts = {"train": sp.train.select(range(120)), "test": sp.test.select(range(40))}
    with Featurizer(eng, 32, progress=False) as f:
        write_store(tmp_path / "bits", f, parts, fmt="bits", encoder="threshold:median", classes=sp.classes)
        write_store(tmp_path / "f16", f, parts, fmt="float16", classes=sp.classes)
    bits, floats = FeatureStore(tmp_path / "bits"), FeatureStore(tmp_path / "f16")
    raw = np.asarray(floats.raw("train"), np.float32)
    enc = bits.encoder()
    np.testing.assert_allclose(enc.thresholds_, np.median(raw, axis=0), rtol=2e-3, atol=1e-3)  # fp32 vs fp16 rows
    with pytest.raises(ArtifactError, match="bits cannot be re-encoded.*float store"):
        bits.encoder("thresholds:4")
    with pytest.raises(ArtifactError, match="encoder statistics need a float16/float32 store"):
        bits.sample()
    clf, summary = fit(FitConfig(features=str(tmp_path / "bits"), n_components=200, projection="sim"))
    assert summary["encoder"] == "threshold:median"
    r = summary["recipe"]  # what otl fit --json shows
    assert (r["pool"], r["resize"], r["encoder"], r["n_components"]) == ("none", "crop", "threshold:median", 200)
    assert r["encoder_stats"]["exact"] and r["encoder_stats"]["rows_seen"] == 120
    np.testing.assert_array_equal(clf.encoder_.thresholds_, enc.thresholds_)  # predicts on images with these
    with pytest.raises(ValueError, match="bits cannot be re-encoded"):
        fit(FitConfig(features=str(tmp_path / "bits"), n_components=200, projection="sim", encode="sign"))
    clf, summary = fit(FitConfig(features=str(tmp_path / "f16"), n_components=200, projection="sim", encode="thresholds:4"))
    assert summary["encoder"] == "thresholds:4" and clf.encoder_.thresholds_.shape == (raw.shape[1], 4)
    np.testing.assert_allclose(clf.encoder_.thresholds_, np.quantile(raw, [0.2, 0.4, 0.6, 0.8], axis=0).T,
                               rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- preprocessing


def test_squash_equals_torchvision_resize_to_a_square():
    from torchvision import transforms

    from engine.data import IMAGENET_DEFAULT, Preprocess

    rng = np.random.default_rng(5)
    image = Image.fromarray(rng.integers(0, 256, (300, 170, 3), dtype=np.uint8))
    pre = Preprocess(256, 224, resize="squash")
    ref = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                              transforms.Normalize(pre.mean, pre.std)])(image).numpy()
    got = pre(image)
    assert got.shape == (3, 224, 224)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    assert pre.to_dict()["resize"] == "squash" and "resize" not in IMAGENET_DEFAULT.to_dict()
    assert Preprocess.from_dict(pre.to_dict()) == pre
    with pytest.raises(ValueError, match="resize 'stretch' is not supported"):
        Preprocess(256, 224, resize="stretch")


def test_squash_engine_records_its_preprocessing(tmp_path):
    res = make_build(BuildConfig(**TINY, resize="squash", precision="fp32", backend="onnxruntime",
                                    out=str(tmp_path / "sq")))
    eng = Build(res["build_dir"])
    assert eng.preprocess.resize == "squash" and read_manifest(tmp_path / "sq")["recipe"]["resize"] == "squash"
    assert res["recipe"] == {"pool": "none", "resize": "squash", "input_size": TINY["input_size"]}


def test_default_recipe_input_and_pool():
    """The default engine recipe (bench_recipes.py's winner): a 288 input for 224-crop weights, the
    weights' resize ratio kept (torchvision's Resize(329) + CenterCrop(288)), and a 3 x 3 average,
    falling back to the largest average a smaller map allows."""
    import torchvision.transforms as T

    from engine.build import resolve_recipe

    r = resolve_recipe(BuildConfig(model="mobilenet_v2", weights="random"))
    assert (r.input_size, r.preprocess.crop_size, r.preprocess.resize_size, r.pool) == (288, 288, 329, "avg3")
    rows = {c["cut"]: c for c in list_cuts("mobilenet_v2", 288, None)}  # None: the default pool
    assert tuple(rows["features.18"]["shape"]) == (1280, 9, 9) and rows["features.18"]["features"] == 11520
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    ref = T.Compose([T.Resize(329), T.CenterCrop(288), T.ToTensor(),
                     T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])(img).numpy()
    np.testing.assert_allclose(r.preprocess(img), ref, atol=1e-5)
    # smaller maps: mobilenet_v2 at 64 gives 2x2 at the end, at 32 a 1x1 map
    assert resolve_recipe(BuildConfig(model="mobilenet_v2", weights="random", input_size=64)).pool == "avg2"
    assert resolve_recipe(BuildConfig(model="mobilenet_v2", weights="random", input_size=32)).pool == "avg"
    assert resolve_recipe(BuildConfig(model="mobilenet_v2", weights="random", input_size=224)).pool == "avg3"


def test_fit_heads_on_the_features_equal_sklearn(tiny_engine, tmp_path, capsys):
    """`otl fit` with no projection and no encoder (the default): each head is scikit-learn's model on
    the very features the build gives, at the alpha given: --head logistic its LogisticRegression
    (C = 1/alpha), --head ridge its RidgeClassifier. --n-components without a projection is refused."""
    from sklearn.linear_model import LogisticRegression, RidgeClassifier

    from engine.cli import main
    from engine.data import load_splits
    from engine.featurize import Featurizer
    from engine.train import FitConfig, fit

    res, _ = tiny_engine
    eng = Build(res["build_dir"])
    sp = load_splits(None, eng.preprocess)
    with Featurizer(eng, 64, workers=0, progress=False) as f:
        tr = [b for b in f.featurize(sp.train)]
        te = [b for b in f.featurize(sp.test)]
    X, y = np.concatenate([b[0] for b in tr]).astype(np.float64), np.concatenate([b[1] for b in tr])
    Xt, yt = np.concatenate([b[0] for b in te]).astype(np.float64), np.concatenate([b[1] for b in te])
    # sklearn's lbfgs crawls on these unscaled rows (norm ~200): it fits rows scaled by c, with
    # C = c² / alpha, the same problem (logits x W = (x / c)(c W), penalty alpha/2 |W|²).
    c = np.sqrt((X ** 2).sum(1).mean())
    alphas = {"logistic": 2000.0, "ridge": 2.0}
    refs = {"logistic": LogisticRegression(C=c ** 2 / alphas["logistic"], tol=1e-8, max_iter=5000).fit(X / c, y),
            "ridge": RidgeClassifier(alpha=alphas["ridge"]).fit(X, y)}
    for head in ("logistic", "ridge"):
        clf, s = fit(FitConfig(build=res["build_dir"], alphas=(alphas[head],), progress=False, workers=0,
                               head=head))
        r = s["recipe"]
        assert (r["encoder"], r["projection"], r["n_components"], s["n_components"]) == ("none", "none", None, None)
        ref = refs[head]
        assert s["head"] == head == r["head"]
        assert s["test_accuracy"] == pytest.approx(ref.score(Xt / (c if head == "logistic" else 1), yt),
                                                   abs=1 / len(yt) + 1e-9)
        index = {c: i for i, c in enumerate(clf.classes_)}  # the classifier names classes, the split numbers them
        pred = ref.predict(Xt / (c if head == "logistic" else 1))
        agree = np.mean(np.array([index[p] for p in clf.predict(Xt.astype(np.float32))]) == pred)
        assert agree >= 0.99, (head, agree)
    assert main(["fit", "--build", res["build_dir"], "--n-components", "64", "--json", "--quiet"]) == 2
    assert "counts optical components, but the projection is none" in capsys.readouterr().out
