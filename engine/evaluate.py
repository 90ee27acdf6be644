"""`otl evaluate / predict`: a saved model on images, scored on exactly the split it held out.

evaluate(EvaluateConfig) and predict(PredictConfig) are the API behind the two commands.

A model file records the split it was fitted on (model_file.split_record: source, layout, seed, fractions and
a hash of each split's file list). evaluate() re-creates that split from the same folder and
seed, checks the hashes, and refuses a folder that changed or a split that overlaps training.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.checks import check_run_numbers
from engine.classifier import TransferClassifier
from engine.model_file import ModelFileError, load_npz
from engine.timing import Timings
from kernels.xp import to_host


class SplitMismatchError(ModelFileError):
    """The data given to evaluate is not the data the model was fitted on, or overlaps its training rows."""


def _recorded_args(rec: dict | None, data, seed, test_fraction, validation_fraction):
    """The data folder and split parameters of the fit, each overridden only when given."""
    if not rec:  # a model written before splits were recorded: the caller's values, else defaults
        return data, 0 if seed is None else seed, 0.2 if test_fraction is None else test_fraction, \
            validation_fraction or 0.0
    if data is None and rec.get("kind") == "folder":
        data = rec.get("root")
        if not data or not Path(data).is_dir():
            raise SplitMismatchError(f"the model was fitted on images in {data}, which is no longer a folder; "
                                     "pass --data DIR with the same images")
    pick = lambda given, key, default: rec.get(key, default) if given is None else given  # noqa: E731
    return (data, pick(seed, "seed", 0), pick(test_fraction, "test_fraction", 0.2),
            pick(validation_fraction, "validation_fraction", 0.0) or 0.0)


def check_default_data(data, rec: dict | None, classes: list[str]) -> None:
    """Refuse to fall back on the embedded digits for a model that was not trained on them (a model
    file that records no data folder): its classes would all be "never seen"."""
    digits = [str(d) for d in range(10)]
    if data is None and (rec or {}).get("kind") != "digits" and list(classes) != digits:
        raise SplitMismatchError(f"this model was trained on classes {list(classes)}, not on the embedded digits, and "
                                 "its file records no data folder; pass --data DIR with the images to score")


def check_overlap(rec: dict | None, split: str) -> None:
    """Refuse a split the model was fitted on (before any image is read)."""
    trained_on = (rec or {}).get("trained_on") or ([] if not rec else ["train"])
    if split in trained_on:
        raise SplitMismatchError(
            f"the {split} split overlaps the rows this model was fitted on ({' + '.join(trained_on)}); "
            "evaluate on the held-out test split (--split test), or refit with --select loo/kfold and no carve-out")


def check_split(rec: dict | None, source: dict, split: str) -> None:
    """Refuse a split the model trained on, or one whose files differ from the fit's."""
    if not rec:
        return
    check_overlap(rec, split)
    want = (rec.get("split_hashes") or {}).get(split)
    got = (source.get("split_hashes") or {}).get(split)
    if want is not None and got != want:
        where = source.get("root") or "the embedded digits"
        raise SplitMismatchError(
            f"the {split} split of {where} (seed {source.get('seed')}, test fraction {source.get('test_fraction')}) "
            f"is not the one this model held out: its files or labels changed since the fit (hash {str(got)[:12]} "
            f"vs {want[:12]}). Restore the folder, pass the fit's --seed/--test-fraction, or refit; "
            "--no-split-check scores other data anyway")


def confusion(clf, batches, encoded, remap=None) -> np.ndarray:
    """int64 (n_classes, n_classes) counts over (features, labels) batches, in the model's class
    order: row = true class, column = predicted (sklearn.metrics.confusion_matrix's convention);
    remap: data's class index -> the model's."""
    k = len(clf.classes_)
    counts = np.zeros((k, k), dtype=np.int64)
    for pred, y in clf.predict_stream(batches, encoded):
        y = to_host(y) if remap is None else remap[to_host(y)]
        np.add.at(counts, (np.asarray(y, dtype=np.int64), np.asarray(to_host(pred), dtype=np.int64)), 1)
    return counts


def accuracy(clf, batches, encoded, remap=None) -> tuple[float, int]:
    """(accuracy, rows) of the classifier over (features, labels) batches; remap: data's class
    index -> the model's."""
    counts = confusion(clf, batches, encoded, remap)
    total = int(counts.sum())
    return int(np.trace(counts)) / max(total, 1), total


def per_class(counts: np.ndarray, classes: list[str]) -> dict:
    """{class: {"n": its images, "accuracy": the share predicted right, None without images}}."""
    n = counts.sum(axis=1)
    return {c: {"n": int(n[i]), "accuracy": float(counts[i, i] / n[i]) if n[i] else None}
            for i, c in enumerate(classes)}



@dataclass
class LoadedModel:
    classifier: TransferClassifier
    meta: dict

    @property
    def build_info(self) -> dict:
        """The describe() of the build the model was trained on; files written before the rename
        call it "engine" (and its folder "engine_dir")."""
        return self.meta.get("build") or self.meta.get("engine") or {}

    def build(self, build_dir=None, threads=None):
        """The build that made the training features; refuses one whose manifest key differs."""
        from engine.build_folder import Build

        root = build_dir or self.meta.get("build_dir") or self.meta.get("engine_dir")
        if not root:
            raise ModelFileError("this model was trained from a feature store without a build reference; "
                                 "pass --build BUILD_DIR")
        if not build_dir and not Path(root).is_dir():
            raise ModelFileError(f"the build this model was trained with, {root}, is not there any more (moved or "
                                 "deleted); pass --build NEWPATH with its new location, or rebuild it with "
                                 "`otl engines` and the same settings")
        made = Build(root, threads=threads)
        info = self.build_info
        want = info.get("key")
        if want and made.key != want:
            raise ModelFileError(
                f"build {root} (key {made.key[:12]}) is not the build this model was trained with "
                f"(key {want[:12]}: {info.get('model')} {info.get('cut')} {info.get('precision')}); "
                "rebuild it with the same settings or retrain"
            )
        return made


def load_model(path) -> LoadedModel:
    meta, arrays = load_npz(path)
    if meta.get("format") != "otl-model":
        raise ModelFileError(f"{path} holds a bare classifier, not an otl model with its build")
    return LoadedModel(TransferClassifier.from_state(meta, arrays), meta)


@dataclass
class EvaluateConfig:
    model: str  # a model file (`otl fit --out`)
    data: str | None = None  # None: the fit's recorded data folder (or the digits)
    build: str | None = None  # None: the build recorded in the model
    split: str = "test"  # train | validation | test
    seed: int | None = None  # None: the fit's recorded split seed
    test_fraction: float | None = None  # None: the fit's recorded fraction
    check: bool = True  # False: score other data than the fit's held-out split (a new test set)
    strict: bool = False
    batch_size: int = 32
    workers: int | None = None
    threads: int | None = None
    progress: bool | None = None


def evaluate(cfg: EvaluateConfig) -> dict:
    """Accuracy of a saved model on `cfg.split` (default: the test split the fit held out)."""
    from engine.data import load_splits, skipped_images
    from engine.featurize import Featurizer

    check_run_numbers(cfg)
    t = Timings()
    m = load_model(cfg.model)
    build = m.build(cfg.build, cfg.threads)
    recorded = m.meta.get("split")
    rec = recorded if cfg.check else None
    data, seed, test_fraction, vf = _recorded_args(recorded, cfg.data, cfg.seed, cfg.test_fraction, None)
    check_default_data(data, recorded, m.classifier.classes_)
    check_overlap(rec, cfg.split)
    splits = load_splits(data, build.preprocess, test_fraction=test_fraction, validation_fraction=vf, seed=seed,
                         strict=cfg.strict)
    check_split(rec, splits.source, cfg.split)
    ds = getattr(splits, cfg.split)
    if ds is None:
        raise ValueError(f"the data has no {cfg.split} split; pass a DIR with {cfg.split}/ or a DIR/<class>/* layout")
    unseen = sorted(set(splits.classes) - set(m.classifier.classes_))
    if unseen:
        raise ValueError(f"{cfg.split} data has classes never seen in training: {unseen} "
                         f"(the model knows {m.classifier.classes_})")
    remap = np.array([m.classifier.classes_.index(c) for c in splits.classes])
    with Featurizer(build, cfg.batch_size, cfg.workers, cfg.progress) as f:
        counts = confusion(m.classifier, f.featurize(ds, desc=f"evaluate {cfg.split}"), False, remap)
    t.seconds.update(m.classifier.timings_.seconds)
    total = int(counts.sum())
    classes = list(m.classifier.classes_)
    return {"accuracy": int(np.trace(counts)) / max(total, 1), "n": total, "split": cfg.split, "model": str(cfg.model),
            "per_class": per_class(counts, classes),
            "confusion": {"classes": classes, "matrix": counts.tolist(), "rows": "true class", "columns": "predicted"},
            "split_checked": bool(rec), "skipped_images": skipped_images(splits.skipped, ds.skipped),
            "build": build.describe(), "timings": t.as_dict()}


@dataclass
class PredictConfig:
    model: str  # a model file (`otl fit --out`)
    images: list  # image files and folders (a folder: its images, recursively, under the link rule)
    build: str | None = None  # None: the build recorded in the model
    strict: bool = False  # True: a missing or unreadable image is an error instead of an error row
    batch_size: int = 32  # images per runner call: memory is bounded by it, not by the number of images
    workers: int | None = None
    threads: int | None = None
    progress: bool | None = None


def predict(cfg: PredictConfig) -> list[dict]:
    """One row per image, in the order given (a folder's entries sorted), streamed in batches of
    cfg.batch_size: {"image", "class", "score", "margin"}, or {"image", "error"} for an image that is
    missing, unreadable or a link the scan does not follow (strict: DataError instead).

    score: the ridge decision value of the predicted class (the largest of the model's scores);
    margin: that score minus the runner-up's, >= 0 - near 0 the model hesitates between two classes.
    """
    from engine.data import ImageFolderDataset, iter_batches

    check_run_numbers(cfg)
    m = load_model(cfg.model)
    build = m.build(cfg.build, cfg.threads)
    inputs = _expand_images(cfg.images, cfg.strict)
    files = [p for p, error in inputs if error is None]
    ds = ImageFolderDataset([(p, 0) for p in files], ["?"], build.preprocess, cfg.strict)
    done: dict[int, dict] = {}
    with build.runner() as r:
        for x, _, idx in iter_batches(ds, cfg.batch_size, cfg.workers, cfg.progress, desc="predict"):
            scores = to_host(m.classifier.decision_function(r.infer(x)))
            done.update((i, _prediction(files[i], s, m.classifier.classes_)) for i, s in zip(idx, scores))
    dropped = [i for i in range(len(files)) if i not in done]  # ds.skipped lists them in dataset order
    done.update((i, {"image": str(files[i]), "error": why}) for i, why in zip(dropped, ds.skipped))
    rows, k = [], 0
    for p, error in inputs:
        if error is None:
            rows.append(done[k])
            k += 1
        else:
            rows.append({"image": str(p), "error": error})
    return rows


def _prediction(path, scores: np.ndarray, classes: list[str]) -> dict:
    """The row of one image from its ridge scores (float64 (n_classes,))."""
    top, second = np.argsort(scores)[::-1][:2]
    return {"image": str(path), "class": classes[top], "score": float(scores[top]),
            "margin": float(scores[top] - scores[second])}


def _expand_images(given, strict: bool) -> list[tuple[Path, str | None]]:
    """(path, None) per image to predict, (path, why) per one that cannot be: a missing path, or a
    link a folder's scan does not follow (engine.data.FolderScan); strict raises DataError instead."""
    from engine.data import DataError, FolderScan

    out = []
    for g in map(Path, given):
        if g.is_dir():
            scan = FolderScan(g, strict)
            scan.reserve(g)
            found = scan.images(g)
            scan.finish()
            out += sorted([(p, None) for p in found] + [(p, why) for p, why in scan.skipped], key=lambda t: t[0])
        elif g.exists():
            out.append((g, None))
        elif strict:
            raise DataError(f"image {g} does not exist; expected an image file or a folder of images - "
                            "check the path, or drop --strict to report it as an error row")
        else:
            out.append((g, f"{g}: does not exist"))
    return out
