"""Folders -> train / validation / test datasets, and the hashes that say what each split holds.

Layouts (load_splits):
    A) DIR/{train,validation|val|valid,test}/<class>/*  the folders as given; a missing validation/
       is carved from train/ when validation_fraction > 0
    B) DIR/<class>/*                                   split here by a stratified seeded draw
    no DIR                                             the embedded digits (DigitsDataset)

Folders are walked under the link rule of engine/data/scan.py's FolderScan (links followed once, only inside DIR;
the others skipped and counted in Splits.skipped, or errors with strict=True).

Splits.source is manifest-friendly: the layout, seed and fractions, the counts, a hash of the whole
file list (file_list_hash, which keys caches) and one per split (split_hash, checked by evaluate).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.data.datasets import DigitsDataset, ImageDataset, ImageFolderDataset
from engine.data.errors import DataError
from engine.data.preprocess import IMAGENET_DEFAULT, Preprocess
from engine.data.scan import IMAGE_EXTENSIONS, FolderScan
from engine.data.stratified import check_fractions, stratified_split

SPLIT_NAMES = {"train": "train", "validation": "validation", "val": "validation", "valid": "validation",
               "test": "test"}
_SPLITS = ("train", "validation", "test")


@dataclass
class Splits:
    train: ImageDataset
    validation: ImageDataset | None
    test: ImageDataset | None
    classes: list[str]
    source: dict  # manifest-friendly; source["file_list_hash"] keys caches
    skipped: list[str] = field(default_factory=list)  # "path: reason" of the links the scan did not follow


def list_images(folder: Path, strict: bool = False) -> list[Path]:
    """Image files under folder, recursive and sorted, links taken by the rule of engine/data/scan.py
    with folder as the root; hidden and non-image files are ignored."""
    scan = FolderScan(folder, strict)
    scan.reserve(folder)
    found = scan.images(Path(folder))
    scan.finish()
    return found


def file_list_hash(root: Path, paths) -> str:
    """sha256 over sorted "relative/path<TAB>size" lines: equal across clones (no mtimes, no abs paths)."""
    h = hashlib.sha256()
    for rel, size in sorted((Path(p).relative_to(root).as_posix(), os.stat(p).st_size) for p in paths):
        h.update(f"{rel}\t{size}\n".encode())
    return h.hexdigest()


def split_hash(dataset: ImageDataset | None, root: str | None) -> str | None:
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


def _scan_classes(folder: Path, scan: FolderScan, need_two: bool = True) -> dict[str, list[Path]]:
    """{class name: image paths} for folder/<class>/*, with errors for the common mistakes."""
    dirs = scan.subdirs(folder)
    if not dirs:
        n = len(FolderScan(folder).images(folder))
        raise DataError(f"{folder} has no class folders ({f'{n} images lie directly in it' if n else 'it is empty'});"
                        f" expected one subfolder per class, e.g. {folder}/cat/1.jpg, {folder}/dog/2.jpg")
    classes = {d.name: scan.images(d) for d in dirs}
    for name, files in classes.items():
        if not files:
            raise DataError(f"class folder {folder / name} holds no images (extensions: "
                            f"{' '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
    if need_two and len(classes) < 2:
        raise DataError(f"{folder} has only one class folder ({next(iter(classes))}); a classifier needs "
                        "at least two classes - add one subfolder per class")
    return classes


def load_splits(data_dir: str | Path | None, preprocess: Preprocess = IMAGENET_DEFAULT, test_fraction: float = 0.2,
                validation_fraction: float = 0.0, seed: int = 0, strict: bool = False) -> Splits:
    """Datasets for DIR/{train,validation|val|valid,test}/<class>/* (folders as given; a missing
    validation/ is carved from train when validation_fraction > 0), for DIR/<class>/* (stratified,
    seeded split), or for the embedded digits when data_dir is None."""
    check_fractions(test_fraction, validation_fraction)
    common = {"seed": seed, "test_fraction": test_fraction, "validation_fraction": validation_fraction}
    if data_dir is None:
        parts = [DigitsDataset(s, preprocess, seed, test_fraction, validation_fraction) for s in _SPLITS]
        digest = hashlib.sha256(DigitsDataset("all").images.tobytes()).hexdigest()
        return _make_splits(*parts, {"kind": "digits", "root": None, **common, "file_list_hash": digest})
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"data directory {root} {'is not a folder' if root.exists() else 'does not exist'}; "
                        "expected DIR/<class>/*.jpg or DIR/train/<class>/*.jpg - or give none for the digits")
    scan = FolderScan(root, strict)
    scan.reserve(root, recursive=False)  # root/x -> train must not take the place of train/ itself
    split_dirs = _split_folders(root, scan)
    for d in split_dirs.values() or [root]:  # what the load reads: no link may take the place of these files
        scan.reserve(d)
    if split_dirs:
        splits = _from_split_folders(root, split_dirs, scan, preprocess, strict, common)
    else:
        splits = _from_class_folders(root, scan, preprocess, strict, common)
    splits.skipped = scan.finish()
    return splits


def _split_folders(root: Path, scan: FolderScan) -> dict[str, Path]:
    """{canonical split name: folder} for root's train/ validation/ (val/, valid/) test/ folders."""
    split_dirs: dict[str, Path] = {}
    for d in scan.subdirs(root):
        canonical = SPLIT_NAMES.get(d.name.lower())
        if canonical in split_dirs:
            raise DataError(f"{root} has both {split_dirs[canonical].name}/ and {d.name}/ for the {canonical} "
                            "split; keep one of them")
        if canonical:
            split_dirs[canonical] = d
    if split_dirs and "train" not in split_dirs:
        raise DataError(f"{root} has {', '.join(d.name + '/' for d in split_dirs.values())} but no train/; "
                        "expected train/ (and optionally validation/, test/), each with one folder per class")
    return split_dirs


def _from_split_folders(root: Path, split_dirs: dict[str, Path], scan: FolderScan, preprocess: Preprocess,
                        strict: bool, common: dict) -> Splits:
    """Layout A: one dataset per split folder, labelled by the training classes."""
    order = [s for s in _SPLITS if s in split_dirs]  # train first: between two links, train's is taken
    scanned = {s: _scan_classes(split_dirs[s], scan, need_two=s == "train") for s in order}
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
    fraction, seed = common["validation_fraction"], common["seed"]
    if "validation" not in datasets and fraction > 0:
        train, val, _ = stratified_split(datasets["train"].labels, 0.0, fraction, seed)
        datasets["validation"] = datasets["train"].select(val)
        datasets["train"] = datasets["train"].select(train)
        validation_source = f"{fraction:g} of train/ (stratified, seed {seed})"
    source = {"kind": "folder", "layout": "train/validation/test", "root": str(root.resolve()), **common,
              "validation_source": validation_source,
              "file_list_hash": file_list_hash(root, [p for v in samples.values() for p, _ in v])}
    return _make_splits(*(datasets.get(s) for s in _SPLITS), source, root)


def _from_class_folders(root: Path, scan: FolderScan, preprocess: Preprocess, strict: bool,
                        common: dict) -> Splits:
    """Layout B: every image of DIR/<class>/*, split here (stratified, seeded)."""
    scanned = _scan_classes(root, scan)
    classes = sorted(scanned)
    full = ImageFolderDataset([(p, i) for i, c in enumerate(classes) for p in scanned[c]], classes, preprocess,
                              strict)
    fractions = common["test_fraction"], common["validation_fraction"]
    parts = [full.select(idx) if len(idx) else None
             for idx in stratified_split(full.labels, *fractions, common["seed"])]
    source = {"kind": "folder", "layout": "class folders", "root": str(root.resolve()), **common,
              "file_list_hash": file_list_hash(root, full.paths)}
    return _make_splits(*parts, source, root)


def _make_splits(train, validation, test, source, root: Path | None = None) -> Splits:
    """Splits with empty splits as None, and the counts, split hashes and validation_source recorded."""
    counts = {s: len(d) if d is not None else 0 for s, d in zip(_SPLITS, (train, validation, test))}
    if not counts["validation"]:  # validation_source: "val/" (a folder), how it was carved, or None
        source["validation_source"] = None
    elif source.get("validation_source") is None:
        fraction, seed = source["validation_fraction"], source["seed"]
        source["validation_source"] = f"{fraction:g} of all images (stratified, seed {seed})"
    validation = validation if counts["validation"] else None
    test = test if counts["test"] else None
    hashes = {s: split_hash(d, root) for s, d in zip(_SPLITS, (train, validation, test))}
    return Splits(train, validation, test, list(train.classes),
                  {**source, "classes": list(train.classes), "counts": counts, "split_hashes": hashes})
