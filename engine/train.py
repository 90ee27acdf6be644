"""`otl fit / evaluate / predict`: the gradient-free training job over an engine or a feature store.

One streaming pass: engine features -> bits -> y = |xR|^2 -> normal equations, batch by batch.
Alpha is chosen on validation/ (or a seeded fraction of train), then one Cholesky solve.
The saved model file names its engine (folder and manifest key) and holds the classifier.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.classifier import REFERENCE_ALPHAS, ModelFileError, TransferClassifier, load_npz, save_npz
from engine.timing import Timings
from kernels._util import to_host


@dataclass
class FitConfig:
    engine: str | None = None  # an engine build folder
    features: str | None = None  # or a feature store (featurize once, fit many)
    data: str | None = None  # None: embedded digits
    n_components: int = 4000
    encode: str | None = None  # None: sign, or the encoder a bit store was written with
    alphas: tuple = REFERENCE_ALPHAS
    projection: str = "sim"
    seed: int = 0
    fit_intercept: bool = True
    matrix_dtype: str = "int8"
    camera_bits: int | None = None
    test_fraction: float = 0.2
    validation_fraction: float = 0.1  # used only when the data has no validation/ folder
    batch_size: int = 32
    workers: int | None = None
    threads: int | None = None
    strict: bool = False
    progress: bool | None = None
    out: str | None = None


def fit(cfg: FitConfig) -> tuple[TransferClassifier, dict]:
    """Train, evaluate on test/ when present, save when cfg.out. Returns (classifier, summary)."""
    t0 = time.perf_counter()
    encode = cfg.encode or "sign"
    if cfg.features and cfg.encode is None:
        from engine.store import FeatureStore
        from kernels.encode import Encoder

        encode = Encoder.from_dict(FeatureStore(cfg.features).manifest["encoder"]).spec
    clf = TransferClassifier(cfg.n_components, encode, cfg.alphas, cfg.projection, cfg.seed,
                             cfg.fit_intercept, matrix_dtype=cfg.matrix_dtype, camera_bits=cfg.camera_bits)
    t = clf.timings_
    if cfg.features:
        src = _StoreSource(cfg, t)
    elif cfg.engine:
        src = _EngineSource(cfg, t)
    else:
        raise ValueError("fit needs --engine BUILD_DIR (an `otl engines` folder) or --features STORE")
    with src:
        clf.fit_stream(src.batches("train"), classes=src.classes, validation=src.validation(),
                       encoded=src.encoded)
        test_acc = None
        if src.has("test"):
            test_acc = _accuracy(clf, src.batches("test"), src.encoded)
    summary = {
        "train_accuracy": None, "validation_accuracy": clf.validation_accuracy_, "test_accuracy": test_acc,
        "alpha": clf.alpha_, "n_train": clf.n_train_, "n_validation": getattr(clf, "n_validation_", 0),
        "n_components": cfg.n_components if cfg.projection != "none" else None, "projection": cfg.projection,
        "encoder": clf.encoder_.spec, "solver": clf.solver_, "classes": clf.classes_,
        "engine": src.engine_info, "validation_source": src.validation_source,
    }
    t.add("featurize", 0.0)
    timings = t.as_dict()
    timings["total"] = round(time.perf_counter() - t0, 4)
    summary["timings"] = {k: timings.get(k, 0.0) for k in ("featurize", "encode", "project", "solve", "total")}
    summary["timings"].update({k: v for k, v in timings.items() if k not in summary["timings"]})
    if cfg.out:
        save_model(cfg.out, clf, src.engine_info, src.engine_root)
        summary["model"] = cfg.out
    return clf, summary


def _accuracy(clf, batches, encoded) -> float:
    right = total = 0
    for pred, y in clf.predict_stream(batches, encoded):
        right += int((to_host(pred) == to_host(y)).sum())
        total += len(y)
    return right / max(total, 1)



def _timed(iterable, t: Timings, stage: str):
    """Yield from `iterable`, timing only the production of each item (not the consumer's work)."""
    it = iter(iterable)
    while True:
        with t(stage):
            item = next(it, None)
        if item is None:
            return
        yield item


class _EngineSource:
    """Batches featurized on the fly by an engine; timings go to the classifier's Timings."""

    encoded = False

    def __init__(self, cfg: FitConfig, t: Timings):
        from engine.data import load_splits
        from engine.runtime import Engine

        self.cfg, self.t = cfg, t
        self.engine = Engine(cfg.engine, threads=cfg.threads)
        self.splits = load_splits(cfg.data, self.engine.preprocess, test_fraction=cfg.test_fraction,
                                  validation_fraction=cfg.validation_fraction, seed=cfg.seed, strict=cfg.strict)
        self.classes = self.splits.classes
        self.engine_info, self.engine_root = self.engine.describe(), self.engine.root
        self.train, self.val = self.splits.train, self.splits.validation
        has_folder = cfg.data is not None and any((Path(cfg.data) / d).is_dir() for d in ("validation", "val", "valid"))
        self.validation_source = "validation/" if has_folder else \
            f"{cfg.validation_fraction:g} of train (stratified, seed {cfg.seed})"

    def __enter__(self):
        from engine.featurize import Featurizer

        self.featurizer = Featurizer(self.engine, self.cfg.batch_size, self.cfg.workers, self.cfg.progress)
        self.featurizer.__enter__()
        return self

    def __exit__(self, *exc):
        self.featurizer.__exit__(*exc)

    def has(self, split):
        return getattr(self.splits, split) is not None

    def batches(self, split):
        ds = {"train": self.train, "validation": self.val, "test": self.splits.test}[split]
        return _timed(self.featurizer.featurize(ds, desc=f"fit: {split}"), self.t, "featurize")

    def validation(self):
        return self.batches("validation") if self.val is not None else None


class _StoreSource:
    def __init__(self, cfg: FitConfig, t: Timings):
        from engine.store import FeatureStore

        self.cfg, self.t = cfg, t
        self.store = FeatureStore(cfg.features)
        self.encoded = self.store.format == "bits"
        stored = self.store.manifest["encoder"]
        if self.encoded and cfg.encode is not None:
            from kernels.encode import parse_encoder

            if parse_encoder(cfg.encode).to_dict() != stored:
                raise ValueError(f"store {cfg.features} holds bits made with {stored}, not --encode {cfg.encode}; "
                                 "write a float16 store (`otl featurize --format float16`) to try other encoders")
        self.classes = self.store.classes
        eng = self.store.manifest.get("engine") or {}
        self.engine_info = eng
        self.engine_root = Path(eng["build_dir"]) if eng.get("build_dir") else None
        self.validation_source = "validation/" if "validation" in self.store.splits else None
        if "validation" not in self.store.splits:
            raise ValueError(f"feature store {cfg.features} has no validation split to choose alpha; "
                             "featurize with --validation-fraction or a dataset with validation/")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def has(self, split):
        return split in self.store.splits and self.store.rows(split) > 0

    def batches(self, split):
        enc = None if self.encoded else (self.cfg.encode or "sign")
        # reading the store stands in for featurization
        return _timed(self.store.iter_batches(split, 1024, encoder=enc), self.t, "featurize")

    def validation(self):
        return self.batches("validation")


# ----------------------------------------------------------------------------- model files


def save_model(path, clf: TransferClassifier, engine_info: dict, engine_root) -> Path:
    meta, arrays = clf.state()
    meta = dict(meta, format="otl-model", engine=engine_info,
                engine_dir=str(Path(engine_root).resolve()) if engine_root else None)
    return save_npz(path, meta, arrays)


@dataclass
class LoadedModel:
    classifier: TransferClassifier
    meta: dict

    def engine(self, build_dir=None, threads=None):
        """The engine that made the training features; refuses one whose manifest key differs."""
        from engine.runtime import Engine

        root = build_dir or self.meta.get("engine_dir")
        if not root:
            raise ModelFileError("this model was trained from a feature store without an engine reference; "
                                 "pass --engine BUILD_DIR")
        eng = Engine(root, threads=threads)
        want = (self.meta.get("engine") or {}).get("key")
        if want and eng.key != want:
            raise ModelFileError(
                f"engine {root} (key {eng.key[:12]}) is not the engine this model was trained with "
                f"(key {want[:12]}: {self.meta['engine'].get('model')} {self.meta['engine'].get('cut')} "
                f"{self.meta['engine'].get('precision')}); rebuild that engine or retrain"
            )
        return eng


def load_model(path) -> LoadedModel:
    meta, arrays = load_npz(path)
    if meta.get("format") != "otl-model":
        raise ModelFileError(f"{path} holds a bare classifier, not an otl model with its engine")
    return LoadedModel(TransferClassifier.from_state(meta, arrays), meta)


def evaluate(model_path, data=None, engine=None, batch_size=32, workers=None, threads=None, seed=0,
             test_fraction=0.2, strict=False, progress=None, split="test") -> dict:
    from engine.data import load_splits
    from engine.featurize import Featurizer

    t = Timings()
    m = load_model(model_path)
    eng = m.engine(engine, threads)
    splits = load_splits(data, eng.preprocess, test_fraction=test_fraction, seed=seed, strict=strict)
    ds = getattr(splits, split)
    if ds is None:
        raise ValueError(f"the data has no {split} split; pass a DIR with {split}/ or a DIR/<class>/* layout")
    unseen = sorted(set(splits.classes) - set(m.classifier.classes_))
    if unseen:
        raise ValueError(f"{split} data has classes never seen in training: {unseen} "
                         f"(the model knows {m.classifier.classes_})")
    remap = np.array([m.classifier.classes_.index(c) for c in splits.classes])
    right = total = 0
    with Featurizer(eng, batch_size, workers, progress) as f:
        for pred, y in m.classifier.predict_stream(f.featurize(ds, desc=f"evaluate {split}")):
            right += int((to_host(pred) == remap[to_host(y)]).sum())
            total += len(y)
    t.seconds.update(m.classifier.timings_.seconds)
    return {"accuracy": right / max(total, 1), "n": total, "split": split, "model": str(model_path),
            "engine": eng.describe(), "timings": t.as_dict()}


def predict_files(model_path, images: list[str], engine=None, threads=None) -> list[dict]:
    from engine.data import Preprocess, load_rgb

    m = load_model(model_path)
    eng = m.engine(engine, threads)
    pre: Preprocess = eng.preprocess
    x = np.stack([pre(load_rgb(p)) for p in images]).astype(np.float32)
    with eng.runner() as r:
        scores = to_host(m.classifier.decision_function(r.infer(x)))
    out = []
    for p, s in zip(images, scores):
        i = int(np.argmax(s))
        out.append({"image": str(p), "class": m.classifier.classes_[i], "score": float(s[i])})
    return out
