"""Batched featurization: a dataset through a runner, in bounded memory.

    engine = Engine("builds/mobilenet_v2-features.18-imagenet-fp32")
    splits = load_splits("data/clothing", engine.preprocess)
    with Featurizer(engine, batch_size=32) as f:
        for feats, labels in f.featurize(splits.train):   # (B, F) float32, (B,) int64
            ...
"""
from __future__ import annotations

from typing import Iterator

from engine.runners.base import Runner


class Featurizer:
    """Streams (features, labels) batches; features stay where the runner left them (NumPy or CuPy)."""

    def __init__(self, engine_or_runner, batch_size: int = 32, workers: int | None = None,
                 progress: bool | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if isinstance(engine_or_runner, Runner):
            self.engine, self.runner = None, engine_or_runner
        else:
            self.engine, self.runner = engine_or_runner, engine_or_runner.runner()
        self.batch_size, self.workers, self.progress = batch_size, workers, progress

    def __enter__(self):
        self.runner.activate()
        return self

    def __exit__(self, *exc):
        self.runner.deactivate()

    def featurize(self, dataset, desc: str = "featurize") -> Iterator[tuple]:
        from engine.data import iter_batches

        if self.engine is not None and getattr(dataset, "preprocess", None) is not None:
            want, got = self.engine.preprocess, dataset.preprocess
            if want.to_dict() != got.to_dict():
                raise ValueError(
                    f"dataset preprocessing {got.to_dict()} differs from the engine's {want.to_dict()}; "
                    "load the data with engine.preprocess"
                )
        self.runner.activate()
        for x, y, _ in iter_batches(dataset, self.batch_size, workers=self.workers, progress=self.progress, desc=desc):
            yield self.runner.infer(x), y
