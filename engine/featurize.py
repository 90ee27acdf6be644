"""Batched featurization: a dataset through a build's runner, in bounded memory; `otl featurize`.

    build = Build("builds/mobilenet_v2-features-imagenet-fp32")
    splits = load_splits("data/clothing", build.preprocess)
    with Featurizer(build, batch_size=32) as f:
        for feats, labels in f.featurize(splits.train):   # (B, F) float32, (B,) int64
            ...

featurize(FeaturizeConfig) is the whole `otl featurize` job: a build (given, or made from a
BuildConfig), the data's splits, and a feature store written from them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from engine.backends.base import Runner
from kernels.encode import DEFAULT_SPEC


class Featurizer:
    """Streams (features, labels) batches; features stay where the runner left them (NumPy or CuPy)."""

    def __init__(self, build_or_runner, batch_size: int = 32, workers: int | None = None,
                 progress: bool | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(build_or_runner, Runner):
            self.build, self.runner = None, build_or_runner
        else:
            self.build, self.runner = build_or_runner, build_or_runner.runner()
        self.batch_size, self.workers, self.progress = batch_size, workers, progress

    def __enter__(self):
        self.runner.activate()
        return self

    def __exit__(self, *exc):
        self.runner.deactivate()

    def featurize(self, dataset, desc: str = "featurize") -> Iterator[tuple]:
        from engine.data import iter_batches

        if self.build is not None and getattr(dataset, "preprocess", None) is not None:
            want, got = self.build.preprocess, dataset.preprocess
            if want.to_dict() != got.to_dict():
                raise ValueError(
                    f"dataset preprocessing {got.to_dict()} differs from the build's {want.to_dict()}; "
                    "load the data with build.preprocess"
                )
        self.runner.activate()
        for x, y, _ in iter_batches(dataset, self.batch_size, workers=self.workers, progress=self.progress, desc=desc):
            yield self.runner.infer(x), y


@dataclass
class FeaturizeConfig:
    out: str  # the feature store folder to write
    build: str | None = None  # a build folder; None: made (or reused) from build_config
    build_config: object = None  # engine.build.BuildConfig, used when build is None (default: BuildConfig())
    backend: str = "auto"  # run the build on this backend (auto: the one it was built for)
    data: str | None = None  # None: embedded digits
    format: str = "float16"  # float16 (what the default ridge on the features needs; re-encodable) | bits | float32
    encode: str = DEFAULT_SPEC
    test_fraction: float = 0.2
    validation_fraction: float = 0.0
    seed: int = 0
    strict: bool = False
    batch_size: int = 32
    workers: int | None = None
    threads: int | None = None
    progress: bool | None = None


def open_build(build: str | None, build_config=None, backend: str = "auto", threads: int | None = None):
    """(Build, make_build summary or None): the folder given, or the one build_config makes (or reuses)."""
    from engine.build import BuildConfig, make_build
    from engine.build_folder import Build

    if build:
        return Build(build, backend=backend, threads=threads), None
    res = make_build(build_config or BuildConfig())
    return Build(res["build_dir"], threads=threads), res


def featurize(cfg: FeaturizeConfig) -> dict:
    """Featurize the data's splits into a feature store. Returns the summary `otl featurize --json` prints."""
    from engine.checks import check_run_numbers
    from engine.data import load_splits
    from engine.store import check_request, write_store
    from engine.timing import Timings

    check_run_numbers(cfg)
    check_request(cfg.format, cfg.encode)
    t = Timings()
    with t("build"):
        build, _ = open_build(cfg.build, cfg.build_config, cfg.backend, cfg.threads)
    with t("load_data"):
        splits = load_splits(cfg.data, build.preprocess, test_fraction=cfg.test_fraction,
                             validation_fraction=cfg.validation_fraction, seed=cfg.seed, strict=cfg.strict)
    parts = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    with t("featurize"), Featurizer(build, cfg.batch_size, cfg.workers, cfg.progress) as f:
        manifest = write_store(cfg.out, f, parts, fmt=cfg.format, encoder=cfg.encode, classes=splits.classes,
                               source=splits.source, seed=cfg.seed, scan_skipped=splits.skipped)
    rows = {k: v["rows"] for k, v in manifest["splits"].items()}
    return {"store": str(cfg.out), "build": build.describe(), "format": cfg.format, "rows": rows,
            "features": manifest["n_features"], "emulated": bool(build.manifest.get("emulated")),
            "images_per_second": round(sum(rows.values()) / max(t.seconds["featurize"], 1e-9), 2),
            "skipped_images": manifest["skipped_images"], "timings": t.as_dict()}
