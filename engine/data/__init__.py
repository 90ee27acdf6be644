"""Image datasets for the CNN featurizer: decoding, preprocessing, splits and parallel batching.

    files (or scikit-learn's embedded digits) -> load_rgb (any PIL mode -> RGB, EXIF orientation)
      -> Preprocess (the backbone's own resize / center crop / normalize, as torchvision does it)
      -> iter_batches (float32 (B, 3, H, W) in dataset order, decoded in worker processes;
         unreadable files are dropped and reported once at the end, or raise with strict=True)

    preprocess.py  load_rgb, to_rgb, Preprocess, IMAGENET_DEFAULT
    datasets.py    ImageFolderDataset, DigitsDataset, subset
    stratified.py  stratified_split and samples (index arithmetic on labels)
    scan.py        FolderScan: the one rule for links (followed once, only inside the data root)
    splits.py      load_splits: folder layouts -> Splits, file_list_hash, split_hash
    batches.py     iter_batches, skipped_images (the JSON record of what a pass dropped)
"""
from engine.data.batches import default_workers, iter_batches, skipped_images
from engine.data.datasets import DigitsDataset, ImageDataset, ImageFolderDataset, subset
from engine.data.errors import DataError, DataWarning
from engine.data.preprocess import (IMAGENET_DEFAULT, IMAGENET_MEAN, IMAGENET_STD, RESIZE_MODES, Preprocess,
                                    load_rgb, to_rgb)
from engine.data.scan import FolderScan
from engine.data.splits import (IMAGE_EXTENSIONS, SPLIT_NAMES, Splits, file_list_hash, list_images, load_splits,
                                split_hash)
from engine.data.stratified import stratified_sample, stratified_split

__all__ = [
    "DataError", "DataWarning",
    "IMAGENET_DEFAULT", "IMAGENET_MEAN", "IMAGENET_STD", "RESIZE_MODES", "Preprocess", "load_rgb", "to_rgb",
    "DigitsDataset", "ImageDataset", "ImageFolderDataset", "subset",
    "stratified_sample", "stratified_split",
    "FolderScan", "IMAGE_EXTENSIONS", "SPLIT_NAMES", "Splits", "file_list_hash", "list_images", "load_splits",
    "split_hash",
    "default_workers", "iter_batches", "skipped_images",
]
