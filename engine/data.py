"""Image datasets for the CNN featurizer: decoding, preprocessing, splits and parallel batching.

    files (or scikit-learn's embedded digits) -> load_rgb (any PIL mode -> RGB, EXIF orientation)
      -> Preprocess (the backbone's own resize / center crop / normalize, as torchvision does it)
      -> iter_batches (float32 (B, 3, H, W) in dataset order, decoded in worker processes;
         unreadable files are dropped and reported once at the end, or raise with strict=True)

Folder layouts (load_splits): A) DIR/{train,validation,test}/<class>/*  B) DIR/<class>/*, split
here by a stratified seeded draw. No DIR: the embedded digits, so everything works offline.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import os
import sys
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation",
               "test": "test"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_MODES = ("crop", "squash")


class DataError(ValueError):
    """Any problem with the input data: missing folders, unreadable images, inconsistent classes."""


class DataWarning(UserWarning):
    """Unreadable images were skipped during a pass (strict=False)."""


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to resize_size, center crop crop_size, scale to [0, 1], normalize.

    resize="squash" is the reference's Resize((crop_size, crop_size)) instead: the whole image,
    aspect ratio not kept, no crop (resize_size is then unused).
    """

    resize_size: int
    crop_size: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"  # "bilinear" | "bicubic"
    resize: str = "crop"  # "crop" (torchvision's weights transforms) | "squash" (the reference)

    def __post_init__(self):
        object.__setattr__(self, "resize_size", int(self.resize_size))
        object.__setattr__(self, "crop_size", int(self.crop_size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if not (self.resize_size > 0 and self.crop_size > 0):
            raise DataError(f"Preprocess sizes must be positive, got resize_size={self.resize_size}, "
                            f"crop_size={self.crop_size}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise DataError(f"Preprocess needs 3 means and 3 positive stds (RGB), got mean={self.mean}, "
                            f"std={self.std}")
        if self.interpolation not in ("bilinear", "bicubic"):
            raise DataError(f"Preprocess interpolation {self.interpolation!r} is not supported; "
                            "expected 'bilinear' or 'bicubic'")
        if self.resize not in RESIZE_MODES:
            raise DataError(f"resize {self.resize!r} is not supported; expected one of {', '.join(RESIZE_MODES)} "
                            "(crop: shorter side + center crop, torchvision's; squash: the whole image to a square, the reference's)")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["resize"] == "crop":  # the default is left out, so engine keys from before it stay valid
            del d["resize"]
        return {**d, "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        names = {f.name for f in fields(cls)}
        if set(d) - names or {"resize_size", "crop_size"} - set(d):
            raise DataError(f"Preprocess.from_dict got keys {sorted(d)}; expected {sorted(names)}")
        return cls(**d)

    @classmethod
    def from_weights_transforms(cls, t) -> Preprocess:
        """From a torchvision weights' `.transforms()` (an ImageClassification preset)."""
        try:
            crop, resize, mean, std = t.crop_size, t.resize_size, t.mean, t.std
            interpolation = getattr(t.interpolation, "value", t.interpolation)
        except AttributeError as e:
            raise DataError(f"cannot read preprocessing from {type(t).__name__} ({e}); expected a torchvision "
                            "ImageClassification preset, e.g. Weights.IMAGENET1K_V1.transforms()") from None
        if getattr(t, "antialias", True) is False:
            raise DataError(f"{type(t).__name__} resizes with antialias=False; only antialiased resizing "
                            "(torchvision's default for weights) is reproduced")
        first = lambda v: int(v[0] if isinstance(v, (list, tuple)) else v)  # noqa: E731
        return cls(first(resize), first(crop), tuple(mean), tuple(std), str(interpolation))

    def __call__(self, image: Image.Image) -> np.ndarray:
        """PIL image -> float32 (3, crop_size, crop_size); same values as torchvision's preset."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        mode = InterpolationMode(self.interpolation)
        if self.resize == "squash":
            image = F.resize(to_rgb(image), [self.crop_size, self.crop_size], mode, antialias=True)
        else:
            image = F.center_crop(F.resize(to_rgb(image), [self.resize_size], mode, antialias=True), [self.crop_size])
        # Same float32 operations in the same order as torchvision: x / 255, then (x - mean) / std,
        # in place on a (3, H, W) copy (7x faster than broadcasting over the (H, W, 3) view).
        x = np.asarray(image).transpose(2, 0, 1).astype(np.float32, order="C")
        x /= np.float32(255)
        x -= np.asarray(self.mean, np.float32)[:, None, None]
        x /= np.asarray(self.std, np.float32)[:, None, None]
        return x


IMAGENET_DEFAULT = Preprocess(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB.

    Transparency (RGBA, LA, PA, P or L/RGB with a transparent colour) is composited on white, what
    viewers show; dropping alpha would expose whatever colour sits under transparent pixels.
    Integer grayscale (I;16*, I) is read as 16-bit data and scaled by 255/65535 (not clipped);
    float grayscale (F) is taken as [0, 1] when its maximum is <= 1, else as [0, 255].
    """
    mode = image.mode
    if mode == "RGB" and "transparency" not in image.info:
        return image
    if mode.startswith("I") or mode == "F":
        a = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if mode != "F" else (255.0 if a.max(initial=0.0) <= 1.0 else 1.0)
        return Image.fromarray(np.clip(np.rint(a * scale), 0, 255).astype(np.uint8)).convert("RGB")
    if mode in ("RGBA", "RGBa", "LA", "La", "PA", "P") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        out = Image.new("RGB", rgba.size, (255, 255, 255))
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image file to an RGB PIL image, EXIF orientation applied. Raises DataError."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise DataError(f"{path}: empty file (0 bytes); expected an image - remove or replace it")
        with Image.open(path) as im:
            im.load()  # decode now, so truncated or corrupt files fail here
            try:
                im = ImageOps.exif_transpose(im)
            except Exception:  # a broken EXIF block should not cost the pixels
                pass
            return to_rgb(im)
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, struct.error, ... on bad files
        raise DataError(f"{path}: cannot decode image ({type(e).__name__}: {e}); expected a readable "
                        f"image file - re-save or remove it, or run with strict=False to skip it") from e


class _ImageDataset:
    """Shared behaviour: dataset[i] -> (float32 (3, H, W) or None when unreadable, int label)."""

    classes: list[str]
    labels: np.ndarray  # int64 (N,)
    preprocess: Preprocess
    strict: bool

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

    def select(self, indices) -> _ImageDataset:
        """A new dataset of the same kind holding items `indices` (in that order)."""
        new = copy.copy(self)
        new._take(np.asarray(indices, dtype=np.int64))
        return new


class ImageFolderDataset(_ImageDataset):
    def __init__(self, samples: list[tuple[Path, int]], classes: list[str],
                 preprocess: Preprocess = IMAGENET_DEFAULT, strict: bool = False):
        self.paths = [Path(p) for p, _ in samples]
        self.labels = np.array([label for _, label in samples], dtype=np.int64)
        self.classes, self.preprocess, self.strict = list(classes), preprocess, strict
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


class DigitsDataset(_ImageDataset):
    """scikit-learn's embedded 8x8 digits (1797 images, classes "0".."9") as RGB images.

    Grey levels 0..16 -> 0..255, bright ink on black like MNIST (invert=True: dark ink on white);
    the preprocessing upscales them. Split: stratified and seeded, 60/20/20 by default.
    """

    def __init__(self, split: str = "train", preprocess: Preprocess = IMAGENET_DEFAULT, seed: int = 0,
                 test_fraction: float = 0.2, validation_fraction: float = 0.2, invert: bool = False):
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
        self.images = 255 - images if invert else images
        self.labels = digits.target.astype(np.int64)
        self.classes, self.preprocess, self.strict = [str(c) for c in range(10)], preprocess, False
        parts = stratified_split(self.labels, test_fraction, validation_fraction, seed)
        parts = dict(zip(("train", "validation", "test"), parts), all=np.arange(len(self.labels)))
        if split not in parts:
            raise DataError(f"unknown digits split {split!r}; expected one of {sorted(parts)}")
        self._take(parts[split])

    def _image(self, i):
        return Image.fromarray(self.images[i]).convert("RGB")

    def _take(self, idx):
        self.images, self.labels = self.images[idx], self.labels[idx]


def _quotas(counts: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Share `total` among classes in proportion to counts (largest remainder, ties at random)."""
    exact = counts * total / counts.sum()
    q = np.floor(exact).astype(np.int64)
    order = np.lexsort((rng.random(len(counts)), -(exact - q)))
    q[order[: total - q.sum()]] += 1
    return q


def _check_fractions(test_fraction: float, validation_fraction: float) -> None:
    if not (0 <= test_fraction < 1 and 0 <= validation_fraction < 1 and test_fraction + validation_fraction < 1):
        raise DataError(f"test_fraction={test_fraction}, validation_fraction={validation_fraction}: expected "
                        "each in [0, 1) with a sum below 1, so something is left to train on")


def stratified_split(labels, test_fraction: float = 0.2, validation_fraction: float = 0.0,
                     seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) sorted int64 index arrays; every class keeps >= 1 training item."""
    _check_fractions(test_fraction, validation_fraction)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    _, inv = np.unique(labels, return_inverse=True)
    counts, n = np.bincount(inv), len(labels)
    q_test = np.minimum(_quotas(counts, round(n * test_fraction), rng), counts - 1)
    q_val = np.minimum(_quotas(counts, round(n * validation_fraction), rng), counts - 1 - q_test)
    parts: tuple[list, list, list] = ([np.empty(0, np.int64)], [np.empty(0, np.int64)], [np.empty(0, np.int64)])
    for c in range(len(counts)):
        m = rng.permutation(np.flatnonzero(inv == c))
        t, v = q_test[c], q_test[c] + q_val[c]
        parts[0].append(m[v:]), parts[1].append(m[t:v]), parts[2].append(m[:t])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)  # type: ignore[return-value]


def subset(dataset: _ImageDataset, n: int, seed: int = 0) -> _ImageDataset:
    """n items drawn at random, class proportions kept (e.g. calibration images); all if n >= len."""
    if n <= 0:
        raise DataError(f"subset size must be positive, got {n}")
    if n >= len(dataset):
        return dataset
    rng = np.random.default_rng(seed)
    _, inv = np.unique(dataset.labels, return_inverse=True)
    q = _quotas(np.bincount(inv), n, rng)
    idx = np.concatenate([rng.permutation(np.flatnonzero(inv == c))[: q[c]] for c in range(len(q))])
    return dataset.select(np.sort(idx))


def list_images(folder: Path) -> list[Path]:
    """Image files under folder, recursive and sorted; hidden and non-image files are ignored."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f) for f in filenames
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
    return sorted(found)


def file_list_hash(root: Path, paths) -> str:
    """sha256 over sorted "relative/path<TAB>size" lines: equal across clones (no mtimes, no abs paths)."""
    h = hashlib.sha256()
    for rel, size in sorted((Path(p).relative_to(root).as_posix(), os.stat(p).st_size) for p in paths):
        h.update(f"{rel}\t{size}\n".encode())
    return h.hexdigest()


def _subdirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _scan_classes(folder: Path, need_two: bool = True) -> dict[str, list[Path]]:
    """{class name: image paths} for folder/<class>/*, with errors for the common mistakes."""
    dirs = _subdirs(folder)
    if not dirs:
        n = len(list_images(folder))
        raise DataError(f"{folder} has no class folders ({f'{n} images lie directly in it' if n else 'it is empty'});"
                        f" expected one subfolder per class, e.g. {folder}/cat/1.jpg, {folder}/dog/2.jpg")
    classes = {d.name: list_images(d) for d in dirs}
    for name, files in classes.items():
        if not files:
            raise DataError(f"class folder {folder / name} holds no images (extensions: "
                            f"{' '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
    if need_two and len(classes) < 2:
        raise DataError(f"{folder} has only one class folder ({next(iter(classes))}); a classifier needs "
                        "at least two classes - add one subfolder per class")
    return classes


@dataclass
class Splits:
    train: _ImageDataset
    validation: _ImageDataset | None
    test: _ImageDataset | None
    classes: list[str]
    source: dict  # manifest-friendly; source["file_list_hash"] keys caches


def load_splits(data_dir: str | Path | None, preprocess: Preprocess = IMAGENET_DEFAULT, test_fraction: float = 0.2,
                validation_fraction: float = 0.0, seed: int = 0, strict: bool = False) -> Splits:
    """Datasets for DIR/{train,validation|val|valid,test}/<class>/* (folders as given; a missing
    validation/ is carved from train when validation_fraction > 0), for DIR/<class>/* (stratified,
    seeded split), or for the embedded digits when data_dir is None."""
    _check_fractions(test_fraction, validation_fraction)
    common = {"seed": seed, "test_fraction": test_fraction, "validation_fraction": validation_fraction}
    if data_dir is None:
        parts = [DigitsDataset(s, preprocess, seed, test_fraction, validation_fraction)
                 for s in ("train", "validation", "test")]
        digest = hashlib.sha256(DigitsDataset("all").images.tobytes()).hexdigest()
        return _splits(*parts, {"kind": "digits", "root": None, **common, "file_list_hash": digest})
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data directory {root} {'is not a folder' if root.exists() else 'does not exist'}; "
                        "expected DIR/<class>/*.jpg or DIR/train/<class>/*.jpg - or give none for the digits")
    split_dirs: dict[str, Path] = {}
    for d in _subdirs(root):
        canonical = SPLIT_NAMES.get(d.name.lower())
        if canonical in split_dirs:
            raise DataError(f"{root} has both {split_dirs[canonical].name}/ and {d.name}/ for the {canonical} "
                            "split; keep one of them")
        if canonical:
            split_dirs[canonical] = d
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"{root} has {', '.join(d.name + '/' for d in split_dirs.values())} but no train/; "
                        "expected train/ (and optionally validation/, test/), each with one folder per class")
    rel = lambda ps: file_list_hash(root, ps)  # noqa: E731
    if split_dirs:
        scanned = {s: _scan_classes(d, need_two=s == "train") for s, d in split_dirs.items()}
        classes = sorted(scanned["train"])
        for s, found in scanned.items():
            missing = sorted(set(found) - set(classes))
            if missing:
                raise DataError(f"class folder(s) {missing} in {split_dirs[s]} have no counterpart in "
                                f"{split_dirs['train']}; every split must use the training classes - add "
                                "them to train/ or remove them")
        samples = {s: [(p, classes.index(c)) for c in sorted(f) for p in f[c]] for s, f in scanned.items()}
        datasets = {s: ImageFolderDataset(v, classes, preprocess, strict) for s, v in samples.items()}
        validation_source = split_dirs["validation"].name + "/" if "validation" in split_dirs else None
        if "validation" not in datasets and validation_fraction > 0:
            train, val, _ = stratified_split(datasets["train"].labels, 0.0, validation_fraction, seed)
            datasets["validation"] = datasets["train"].select(val)
            datasets["train"] = datasets["train"].select(train)
            validation_source = f"{validation_fraction:g} of train/ (stratified, seed {seed})"
        source = {"kind": "folder", "layout": "train/validation/test", "root": str(root.resolve()), **common,
                  "validation_source": validation_source,
                  "file_list_hash": rel([p for v in samples.values() for p, _ in v])}
        return _splits(*(datasets.get(s) for s in ("train", "validation", "test")), source, root)
    scanned = _scan_classes(root)
    classes = sorted(scanned)
    full = ImageFolderDataset([(p, i) for i, c in enumerate(classes) for p in scanned[c]], classes, preprocess,
                              strict)
    parts = [full.select(idx) if len(idx) else None
             for idx in stratified_split(full.labels, test_fraction, validation_fraction, seed)]
    source = {"kind": "folder", "layout": "class folders", "root": str(root.resolve()), **common,
              "file_list_hash": rel(full.paths)}
    return _splits(*parts, source, root)


def split_hash(dataset: _ImageDataset | None, root: str | None) -> str | None:
    """What a split holds, as a hash: its files (relative path and size, see file_list_hash) and
    labels, or for the digits its pixels and labels. Equal across clones; None for no split."""
    if dataset is None or not len(dataset):
        return None
    h = hashlib.sha256()
    if isinstance(dataset, DigitsDataset):
        h.update(np.ascontiguousarray(dataset.images).tobytes())
    else:
        h.update(file_list_hash(Path(root), dataset.paths).encode())
    h.update(np.asarray(dataset.labels, dtype=np.int64).tobytes())
    return h.hexdigest()


def _splits(train, validation, test, source, root: Path | None = None) -> Splits:
    counts = {s: len(d) if d is not None else 0 for s, d in
              (("train", train), ("validation", validation), ("test", test))}
    if not counts["validation"]:  # validation_source: "val/" (a folder), how it was carved, or None
        source["validation_source"] = None
    elif source.get("validation_source") is None:
        fraction, seed = source["validation_fraction"], source["seed"]
        source["validation_source"] = f"{fraction:g} of all images (stratified, seed {seed})"
    validation = validation if counts["validation"] else None
    test = test if counts["test"] else None
    hashes = {s: split_hash(d, root) for s, d in
              (("train", train), ("validation", validation), ("test", test))}
    return Splits(train, validation, test, list(train.classes),
                  {**source, "classes": list(train.classes), "counts": counts, "split_hashes": hashes})


@dataclass(frozen=True)
class DatasetSpec:
    """What to load (the CLI's data arguments); `load` returns Splits, to_dict goes in manifests."""

    data_dir: str | None = None
    test_fraction: float = 0.2
    validation_fraction: float = 0.0
    seed: int = 0
    strict: bool = False

    def load(self, preprocess: Preprocess = IMAGENET_DEFAULT) -> Splits:
        return load_splits(self.data_dir, preprocess, self.test_fraction, self.validation_fraction, self.seed,
                           self.strict)

    def to_dict(self) -> dict:
        return asdict(self)


def _load_batch(dataset: _ImageDataset, indices: list[int]):
    """Runs in a worker: (x tensor or None, y, kept indices, reasons for the dropped ones)."""
    import torch

    try:
        loaded = [(i, *dataset.load(i)) for i in indices]
    except DataError as e:  # strict: re-raised by iter_batches, without the worker's traceback wrapper
        return e
    kept = [(i, x) for i, x, _ in loaded if x is not None]
    bad = [reason for _, x, reason in loaded if x is None]
    if not kept:
        return None, None, [], bad
    # A tensor crosses the worker queue through shared memory; a NumPy array would be pickled.
    x = torch.from_numpy(np.stack([x for _, x in kept]))
    idx = [i for i, _ in kept]
    return x, dataset.labels[idx], idx, bad


def iter_batches(dataset: _ImageDataset, batch_size: int, workers: int | None = None,
                 progress: bool | None = None, desc: str = "") -> Iterator[tuple[np.ndarray, np.ndarray, list[int]]]:
    """Yield (x float32 (B, 3, H, W), y int64 (B,), dataset indices) in dataset order.

    Decoding runs in `workers` processes (0: in this process; default min(4, cpu count)), at most
    2 batches per worker in flight. Unreadable images are dropped (B may shrink; a batch with
    nothing left is not yielded) and counted in one DataWarning after the last batch; with
    dataset.strict they raise DataError. Progress bar: on a TTY stderr, or as `progress` says.
    """
    from torch.utils.data import DataLoader
    from tqdm import tqdm

    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if workers is None:
        workers = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    # The DataLoader batches indices; decoding happens in the collate function, in the workers.
    loader = DataLoader(range(len(dataset)), batch_size=batch_size, num_workers=workers,
                        collate_fn=functools.partial(_load_batch, dataset), prefetch_factor=2 if workers else None)
    show = sys.stderr.isatty() if progress is None else progress
    skipped: list[str] = []
    with tqdm(total=len(dataset), desc=desc, unit="img", disable=not show, dynamic_ncols=True) as bar:
        for batch in loader:
            if isinstance(batch, DataError):
                raise batch
            x, y, idx, bad = batch
            skipped += bad
            bar.update(len(idx) + len(bad))
            if idx:
                yield x.numpy(), y, idx
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable image{'s' * (len(skipped) > 1)} "
                      f"(first: {skipped[0]})", DataWarning, stacklevel=2)
