"""`otl fit`: the gradient-free training job over a build (features on the fly) or a feature store.

One streaming pass: build features -> bits -> y = |xR|^2 -> normal equations, batch by batch.
Alpha is chosen without wasting rows (exact leave-one-out, K-fold from statistics, or a holdout on
validation/), then the final model is solved on every training row. The saved model file names its
build (folder and manifest key), the split it was trained on (hashes of each split's files), and
holds the classifier; `evaluate` scores exactly the held-out split of the fit.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


from engine.classifier import TransferClassifier
from engine.evaluate import accuracy
from engine.model_file import save_model, split_record
from engine.timing import Timings, timed_items
from kernels.encode import DEFAULT_SPEC

HOLDOUT_FRACTION = 0.1  # --select holdout without validation/ carves this much of train
# The default recipe, chosen by bench/bench_recipes.py on the clothing photos (docs/benchmarks.md):
# ridge on the pooled float features, no projection (the linear probe). With an optical projection
# (--projection sim | lightonml) the features are binarized first, by DEFAULT_ENCODE unless --encode
# says otherwise; a bit store always trains with the encoder it was written with.
DEFAULT_PROJECTION = "none"
DEFAULT_ENCODE = DEFAULT_SPEC


def default_encoder(projection: str) -> str:
    """The encoder when --encode is not given: floats for ridge on the features, bits for a projection."""
    return "none" if projection == "none" else DEFAULT_ENCODE


@dataclass
class FitConfig:
    build: str | None = None  # a build folder (`otl engines --out`)
    features: str | None = None  # or a feature store (featurize once, fit many)
    data: str | None = None  # None: embedded digits
    n_components: int = 4000
    encode: str | None = None  # None: default_encoder(projection), or the encoder a bit store was written with
    alphas: str | tuple = "auto"  # "auto": relative to tr(G)/k, widened at its edges; "reference"; numbers
    select: str = "auto"  # auto | loo | kfold | holdout (see kernels/selection.py)
    folds: int = 5
    head: str = "auto"  # auto: both, the better held-out accuracy wins (ridge alone past the row budget) | logistic | ridge
    refit_validation: bool = True  # the final model also learns from the validation rows
    projection: str = DEFAULT_PROJECTION  # none (ridge on the features) | sim | lightonml
    seed: int = 0
    fit_intercept: bool = True
    matrix_dtype: str = "int8"
    camera_bits: int | None = None
    test_fraction: float = 0.2
    validation_fraction: float = 0.0  # carved from train when > 0 (or 0.1 for --select holdout) and no validation/
    batch_size: int = 32
    workers: int | None = None
    threads: int | None = None
    strict: bool = False
    progress: bool | None = None
    out: str | None = None

    def carve_fraction(self) -> float:
        if self.validation_fraction > 0:
            return self.validation_fraction
        return HOLDOUT_FRACTION if self.select == "holdout" else 0.0


def fit(cfg: FitConfig) -> tuple[TransferClassifier, dict]:
    """Train, evaluate on test/ when present, save when cfg.out. Returns (classifier, summary)."""
    from kernels.encode import parse_encoder

    t0 = time.perf_counter()
    _check_numbers(cfg)
    encoder = parse_encoder(cfg.encode or default_encoder(cfg.projection))
    store = None
    if cfg.features:
        from engine.store import FeatureStore

        store = FeatureStore(cfg.features)
        if store.format == "bits":  # its bits were made by its encoder: train (and predict) with that one
            encoder = store.encoder(cfg.encode)
    clf = TransferClassifier(cfg.n_components, encoder, cfg.alphas, cfg.projection, cfg.seed,
                             cfg.fit_intercept, matrix_dtype=cfg.matrix_dtype, camera_bits=cfg.camera_bits,
                             select=cfg.select, folds=cfg.folds, refit_validation=cfg.refit_validation,
                             head=cfg.head)
    clf.progress = cfg.progress  # the ridge solve's bars (engine/ridge_training.py)
    t = clf.timings_
    if cfg.features:
        src = _StoreSource(cfg, t, encoder, store)
    elif cfg.build:
        src = _BuildSource(cfg, t, encoder)
    else:
        raise ValueError("fit needs --build BUILD_DIR (an `otl engines` folder) or --features STORE")
    with src:
        clf.fit_stream(src.batches("train"), classes=src.classes, validation=src.validation(),
                       encoded=src.encoded)
        test_acc, n_test = None, 0
        if src.has("test"):
            test_acc, n_test = accuracy(clf, src.batches("test"), src.encoded)
    sel = clf.selection_.to_dict() if clf.selection_ is not None else None
    trained_on = ["train"] + (["validation"] if clf.n_final_ > clf.n_train_ else [])
    split = dict(src.split, trained_on=trained_on)
    summary = {
        "validation_accuracy": clf.validation_accuracy_, "test_accuracy": test_acc,
        "alpha": clf.alpha_, "select": sel["method"] if sel else "none (one alpha)",
        "selection": sel, "n_train": clf.n_train_, "n_validation": clf.n_validation_,
        "n_final": clf.n_final_, "n_test": n_test, "head": clf.head_,
        "head_scores": clf.head_scores_,
        "n_components": cfg.n_components if cfg.projection != "none" else None, "projection": cfg.projection,
        "encoder": clf.encoder_.spec, "solver": clf.solver_, "classes": clf.classes_,
        "build": src.build_info, "validation_source": src.validation_source if clf.n_validation_ else None,
        "split": split, "recipe": recipe(src.build_info, clf, cfg), "skipped_images": src.skipped_images(),
    }
    timings = t.as_dict()
    timings["total"] = round(time.perf_counter() - t0, 4)
    summary["timings"] = {k: timings.get(k, 0.0) for k in ("featurize", "encode", "project", "solve", "total")}
    summary["timings"].update({k: v for k, v in timings.items() if k not in summary["timings"]})
    if cfg.out:
        save_model(cfg.out, clf, src.build_info, src.build_root, split)
        summary["model"] = cfg.out
    return clf, summary


def _check_numbers(cfg: FitConfig) -> None:
    """The CLI's ranges (engine/cli/args.py), for API users: refused before any image is read."""
    from engine.checks import check_int, check_run_numbers

    if cfg.projection != "none":
        check_int("n_components", cfg.n_components, 1)
    check_int("folds", cfg.folds, 2)
    check_run_numbers(cfg)


def recipe(build_info: dict | None, clf: TransferClassifier, cfg: FitConfig) -> dict:
    """What the features went through, from image to ridge: the build's half and the fit's."""
    eng = build_info or {}
    made = eng.get("recipe") or {"pool": "none", "resize": "crop"}
    return {"model": eng.get("model"), "cut": eng.get("cut"), "input_size": made.get("input_size"),
            "pool": made.get("pool"), "resize": made.get("resize"), "precision": eng.get("precision"),
            "encoder": clf.encoder_.spec,
            "encoder_stats": clf.encoder_.stats_, "projection": cfg.projection,
            "n_components": cfg.n_components if cfg.projection != "none" else None, "head": clf.head_}


class _BuildSource:
    """Batches featurized on the fly by a build; timings go to the classifier's Timings."""

    encoded = False

    def __init__(self, cfg: FitConfig, t: Timings, encoder):
        from engine.data import load_splits
        from engine.build_folder import Build
        from kernels.encode import with_sample_first

        self.cfg, self.t = cfg, t
        self.build = Build(cfg.build, threads=cfg.threads)
        self.splits = load_splits(cfg.data, self.build.preprocess, test_fraction=cfg.test_fraction,
                                  validation_fraction=cfg.carve_fraction(), seed=cfg.seed, strict=cfg.strict)
        self.classes = self.splits.classes
        self.build_info, self.build_root = self.build.describe(), self.build.root
        self.train, self.val = self.splits.train, self.splits.validation
        if encoder.needs_fit and not encoder.fitted:  # thresholds from the first rows: make them a uniform sample
            self.train = with_sample_first(self.train, self.build.n_features, cfg.seed)
        self.validation_source = self.splits.source.get("validation_source")
        self.split = split_record(self.splits.source)

    def __enter__(self):
        from engine.featurize import Featurizer

        self.featurizer = Featurizer(self.build, self.cfg.batch_size, self.cfg.workers, self.cfg.progress)
        self.featurizer.__enter__()
        return self

    def __exit__(self, *exc):
        self.featurizer.__exit__(*exc)

    def has(self, split):
        return getattr(self.splits, split) is not None

    def batches(self, split):
        ds = {"train": self.train, "validation": self.val, "test": self.splits.test}[split]
        return timed_items(self.featurizer.featurize(ds, desc=f"fit: {split}"), self.t, "featurize")

    def validation(self):
        return self.batches("validation") if self.val is not None else None

    def skipped_images(self) -> dict:
        """What the folder scan and the passes over train, validation and test dropped."""
        from engine.data import skipped_images

        passes = (ds.skipped for ds in (self.train, self.val, self.splits.test) if ds is not None)
        return skipped_images(self.splits.skipped, *passes)


class _StoreSource:
    def __init__(self, cfg: FitConfig, t: Timings, encoder, store):
        self.cfg, self.t = cfg, t
        self.store = store
        self.encoded = self.store.format == "bits"
        if not self.encoded and encoder.needs_fit and not encoder.fitted:
            with t("encoder_statistics"):  # a uniform row sample of the stored train split, one read
                encoder.fit(self.store.sample("train"))
        self.classes = self.store.classes
        made_by = self.store.build_info
        self.build_info = made_by
        self.build_root = Path(made_by["build_dir"]) if made_by.get("build_dir") else None
        self.validation_source = None
        if self.has("validation"):
            self.validation_source = (self.store.manifest.get("source") or {}).get("validation_source") or "validation"
        self.split = dict(split_record(self.store.manifest.get("source") or {}), store=str(self.store.root))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def has(self, split):
        return split in self.store.splits and self.store.rows(split) > 0

    def batches(self, split):
        # reading the store stands in for featurization; the classifier encodes float rows
        return timed_items(_counted(self.store.iter_batches(split, 1024), self.store.rows(split),
                                    f"fit: {split} (store)", self.cfg.progress), self.t, "featurize")

    def validation(self):
        return self.batches("validation") if self.has("validation") else None

    def skipped_images(self) -> dict | None:
        """What featurizing the store dropped, as its manifest recorded it (None: not recorded)."""
        return self.store.manifest.get("skipped_images")


def _counted(batches, rows: int, desc: str, progress: bool | None):
    """(X, y) batches, counted in rows on a bar on stderr: reading a large store takes minutes."""
    from kernels.progress import progress_bar

    with progress_bar(progress, total=rows, desc=desc, unit="row") as bar:
        for X, y in batches:
            bar.update(len(y))
            yield X, y
