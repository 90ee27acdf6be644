"""Datasets of labelled images: dataset[i] -> (float32 (3, H, W) or None when unreadable, int label).

    ImageFolderDataset  image files with labels (what load_splits builds from a folder)
    DigitsDataset       scikit-learn's embedded 8x8 digits, so everything works offline
    subset              a seeded, class-stratified sample of a dataset (e.g. calibration images)
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from PIL import Image

from engine.data.errors import DataError
from engine.data.preprocess import IMAGENET_DEFAULT, Preprocess, load_rgb
from engine.data.stratified import stratified_sample, stratified_split


class ImageDataset:
    """Shared behaviour; a subclass provides _image(i) (a PIL image) and _take(indices)."""

    classes: list[str]
    labels: np.ndarray  # int64 (N,)
    preprocess: Preprocess
    strict: bool
    skipped: list[str]  # "path: why" of the images the last iter_batches pass dropped (set by it)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[np.ndarray | None, int]:
        return self.load(i)[0], int(self.labels[i])

    def load(self, i: int) -> tuple[np.ndarray | None, str | None]:
        """(array, None), or (None, reason) for an unreadable image when not strict."""
        try:
            return self.preprocess(self._image(i)), None
        except DataError as e:
            if self.strict:
                raise
            return None, str(e)

    def select(self, indices) -> ImageDataset:
        """A new dataset of the same kind holding items `indices` (in that order)."""
        new = copy.copy(self)
        new._take(np.asarray(indices, dtype=np.int64))
        return new


class ImageFolderDataset(ImageDataset):
    def __init__(self, samples: list[tuple[Path, int]], classes: list[str],
                 preprocess: Preprocess = IMAGENET_DEFAULT, strict: bool = False):
        self.paths = [Path(p) for p, _ in samples]
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.classes, self.preprocess, self.strict = list(classes), preprocess, strict
        self.skipped = []
        if len(self.labels) and not (0 <= self.labels.min() and self.labels.max() < len(self.classes)):
            raise DataError(f"labels span {self.labels.min()}..{self.labels.max()} but there are "
                            f"{len(self.classes)} classes; expected labels in 0..{len(self.classes) - 1}")

    @property
    def samples(self) -> list[tuple[Path, int]]:
        return list(zip(self.paths, self.labels.tolist()))

    def _image(self, i):
        return load_rgb(self.paths[i])

    def _take(self, idx):
        self.paths, self.labels = [self.paths[i] for i in idx], self.labels[idx]


class DigitsDataset(ImageDataset):
    """scikit-learn's embedded 8x8 digits (1797 images, classes "0".."9") as RGB images.

    Grey levels 0..16 -> 0..255, bright ink on black like MNIST; the preprocessing upscales them.
    Split: stratified and seeded, 60/20/20 by default; split="all" keeps every image.
    """

    def __init__(self, split: str = "train", preprocess: Preprocess = IMAGENET_DEFAULT, seed: int = 0,
                 test_fraction: float = 0.2, validation_fraction: float = 0.2):
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # uint8 (1797, 8, 8)
        self.labels = digits.target.astype(np.int64)
        self.classes, self.preprocess, self.strict = [str(c) for c in range(10)], preprocess, False
        self.skipped = []
        parts = stratified_split(self.labels, test_fraction, validation_fraction, seed)
        parts = dict(zip(("train", "validation", "test"), parts), all=np.arange(len(self.labels)))
        if split not in parts:
            raise DataError(f"unknown digits split {split!r}; expected one of {sorted(parts)}")
        self._take(parts[split])

    def _image(self, i):
        return Image.fromarray(self.images[i]).convert("RGB")

    def _take(self, idx):
        self.images, self.labels = self.images[idx], self.labels[idx]


def subset(dataset: ImageDataset, n: int, seed: int = 0) -> ImageDataset:
    """n items drawn at random, class proportions kept (e.g. calibration images); all if n >= len."""
    if n <= 0:
        raise DataError(f"subset size must be positive, got {n}")
    if n >= len(dataset):
        return dataset
    return dataset.select(stratified_sample(dataset.labels, n, seed))
