"""engine/data: decoding of every PIL mode, folder layouts and their errors, splits, batching."""
from __future__ import annotations

import io
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import CLOTHING

from engine.data import (IMAGENET_DEFAULT, DataError, DataWarning, DigitsDataset, ImageFolderDataset, Preprocess,
                         file_list_hash, iter_batches, list_images, load_rgb, load_splits, skipped_images,
                         stratified_split, subset)

SMALL = Preprocess(16, 12)  # tiny images keep the suite fast


def _save(path: Path, color=(200, 30, 30), size=(20, 16), fmt="PNG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, fmt)
    return path


def _folder(root: Path, counts: dict[str, int], ext=".png") -> Path:
    for k, (name, n) in enumerate(counts.items()):
        for i in range(n):
            _save(root / name / f"{i:03d}{ext}", (20 * k, 100, 255 - 20 * k), fmt="JPEG" if ext == ".jpg" else "PNG")
    return root


# --- preprocessing ----------------------------------------------------------------------------

@pytest.mark.parametrize("weights", ["MobileNet_V2_Weights", "EfficientNet_B0_Weights"])  # bilinear, bicubic
def test_preprocess_matches_torchvision_preset(weights):
    import torchvision.models as models

    t = getattr(models, weights).IMAGENET1K_V1.transforms()  # builds the preset, downloads nothing
    p = Preprocess.from_weights_transforms(t)
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 411, 3), dtype=np.uint8))
    x = p(image)
    assert x.dtype == np.float32 and x.shape == (3, 224, 224) and x.flags.c_contiguous
    np.testing.assert_allclose(x, t(image).numpy(), rtol=0, atol=1e-5)


def test_preprocess_dict_roundtrip_and_errors():
    assert IMAGENET_DEFAULT == Preprocess(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")
    assert Preprocess.from_dict(IMAGENET_DEFAULT.to_dict()) == IMAGENET_DEFAULT
    with pytest.raises(DataError, match="interpolation 'nearest'.*expected 'bilinear' or 'bicubic'"):
        Preprocess(256, 224, interpolation="nearest")
    with pytest.raises(DataError, match="expected a torchvision ImageClassification preset"):
        Preprocess.from_weights_transforms(object())
    with pytest.raises(DataError, match="got keys"):
        Preprocess.from_dict({"resize_size": 1, "crop_size": 1, "colour": 2})


# --- decoding ---------------------------------------------------------------------------------

def test_load_rgb_converts_every_mode(tmp_path):
    cases = {}
    cases["L.png"] = Image.new("L", (4, 4), 77)
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent black -> white
    cases["RGBA.png"] = rgba
    cases["LA.png"] = Image.new("LA", (4, 4), (50, 0))
    cases["CMYK.jpg"] = Image.new("CMYK", (4, 4), (0, 0, 0, 0))
    p = Image.new("P", (4, 4), 1)
    p.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    p.putpixel((0, 0), 0)
    p.info["transparency"] = 0
    cases["P.png"] = p
    cases["I16.png"] = Image.fromarray(np.array([[0, 257, 32768, 65535]] * 4, dtype=np.uint16))
    cases["bits.bmp"] = Image.new("1", (4, 4), 1)
    for name, im in cases.items():
        im.save(tmp_path / name)
    get = lambda n: np.asarray(load_rgb(tmp_path / n))  # noqa: E731
    for name in cases:
        im = load_rgb(tmp_path / name)
        assert im.mode == "RGB" and im.size == (4, 4), name
    assert (get("L.png") == 77).all()
    assert tuple(get("RGBA.png")[0, 0]) == (255, 255, 255) and tuple(get("RGBA.png")[1, 1]) == (10, 20, 30)
    assert (get("LA.png") == 255).all()  # alpha 0 everywhere: all background
    assert (get("CMYK.jpg") > 240).all()  # no ink is white
    assert tuple(get("P.png")[0, 0]) == (255, 255, 255) and tuple(get("P.png")[1, 1]) == (255, 0, 0)
    assert get("I16.png")[0, :, 0].tolist() == [0, 1, 128, 255]  # scaled by 255/65535, not clipped
    assert (get("bits.bmp") == 255).all()


def test_load_rgb_applies_exif_orientation(tmp_path):
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "o.jpg", exif=exif.tobytes())
    assert load_rgb(tmp_path / "o.jpg").size == (20, 40)


def _bad_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.jpg").write_bytes(b"")
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (folder / "garbage.png").write_bytes(b"this is not a png at all")
    return sorted(folder.iterdir())


@pytest.mark.parametrize("name,reason", [("zero.jpg", "empty file"), ("truncated.jpg", "truncated"),
                                         ("garbage.png", "cannot decode")])
def test_unreadable_files_raise_naming_the_file(tmp_path, name, reason):
    _bad_files(tmp_path)
    with pytest.raises(DataError, match=f"{name}.*{reason}"):
        load_rgb(tmp_path / name)
    ds = ImageFolderDataset([(tmp_path / name, 0)], ["a"], SMALL, strict=True)
    with pytest.raises(DataError, match=name):
        ds[0]
    assert ImageFolderDataset([(tmp_path / name, 0)], ["a"], SMALL)[0] == (None, 0)


# --- folders and splits -----------------------------------------------------------------------

def test_listing_ignores_non_images_and_hidden_files(tmp_path):
    _folder(tmp_path, {"a": 2})
    (tmp_path / "a" / "notes.txt").write_text("x")
    (tmp_path / "a" / ".DS_Store").write_bytes(b"x")
    (tmp_path / "a" / "._000.png").write_bytes(b"x")  # macOS AppleDouble file
    _save(tmp_path / "a" / "UPPER.JPG", fmt="JPEG")
    _save(tmp_path / "a" / "nested" / "deep.png")
    assert [p.name for p in list_images(tmp_path / "a")] == ["000.png", "001.png", "UPPER.JPG", "deep.png"]


def test_layout_b_stratified_split_reproducible(tmp_path):
    _folder(tmp_path, {"cat": 10, "dog": 20, "eel": 5})
    s = load_splits(tmp_path, SMALL, test_fraction=0.2, validation_fraction=0.2, seed=3)
    assert s.classes == ["cat", "dog", "eel"] and s.source["layout"] == "class folders"
    assert s.source["counts"] == {"train": 21, "validation": 7, "test": 7}
    assert s.source["validation_source"] == "0.2 of all images (stratified, seed 3)"
    assert np.bincount(s.test.labels).tolist() == [2, 4, 1]
    paths = [set(d.paths) for d in (s.train, s.validation, s.test)]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    again = load_splits(tmp_path, SMALL, 0.2, 0.2, seed=3)
    assert again.test.paths == s.test.paths and again.source == s.source
    assert load_splits(tmp_path, SMALL, 0.2, 0.2, seed=4).test.paths != s.test.paths
    assert load_splits(tmp_path, SMALL, test_fraction=0.0).test is None


def test_stratified_split_keeps_a_training_item_per_class():
    labels = np.array([0] * 50 + [1])
    train, val, test = stratified_split(labels, 0.3, 0.3, seed=0)
    assert 50 in train and len(train) + len(val) + len(test) == 51
    with pytest.raises(DataError, match="sum below 1"):
        stratified_split(labels, 0.6, 0.5)


def test_layout_a_with_aliases_and_carved_validation(tmp_path):
    _folder(tmp_path / "train", {"a": 6, "b": 4})
    _folder(tmp_path / "val", {"a": 1, "b": 1})
    _folder(tmp_path / "test", {"b": 2})  # a class absent from test is fine
    s = load_splits(tmp_path, SMALL)
    assert s.classes == ["a", "b"] and s.source["layout"] == "train/validation/test"
    assert s.source["counts"] == {"train": 10, "validation": 2, "test": 2}
    assert s.test.labels.tolist() == [1, 1]  # labels follow the training classes
    assert s.source["validation_source"] == "val/"
    shutil.rmtree(tmp_path / "val")
    s = load_splits(tmp_path, SMALL, validation_fraction=0.2)
    assert s.source["counts"] == {"train": 8, "validation": 2, "test": 2}
    assert s.source["validation_source"] == "0.2 of train/ (stratified, seed 0)"
    assert load_splits(tmp_path, SMALL).validation is None
    assert load_splits(tmp_path, SMALL).source["validation_source"] is None


def test_file_list_hash_is_relative_and_tracks_content(tmp_path):
    _folder(tmp_path / "one", {"a": 2, "b": 2})
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    h1 = load_splits(tmp_path / "one", SMALL).source["file_list_hash"]
    assert h1 == load_splits(tmp_path / "two", SMALL).source["file_list_hash"]
    _save(tmp_path / "two" / "a" / "new.png")
    assert h1 != file_list_hash(tmp_path / "two", list_images(tmp_path / "two"))


@pytest.mark.parametrize("setup,match", [
    (lambda r: None, "does not exist"),
    (lambda r: r.write_text("x"), "is not a folder"),
    (lambda r: r.mkdir(), "no class folders .*it is empty"),
    (lambda r: _save(r / "x.png"), "no class folders .*1 images lie directly"),
    (lambda r: (_folder(r, {"a": 2}), (r / "b").mkdir(), (r / "b" / "x.txt").write_text("x")),
     r"class folder .*b holds no images"),
    (lambda r: _folder(r, {"only": 3}), r"only one class folder \(only\)"),
    (lambda r: (_folder(r / "train", {"a": 2, "b": 2}), _folder(r / "test", {"a": 1, "c": 1})),
     r"\['c'\] in .*test have no counterpart"),
    (lambda r: _folder(r / "test", {"a": 2, "b": 2}), "test/ but no train/"),
    (lambda r: (_folder(r / "train", {"a": 2, "b": 2}), _folder(r / "val", {"a": 1}),
                _folder(r / "validation", {"a": 1})), "both val/ and validation/"),
])
def test_folder_errors(tmp_path, setup, match):
    root = tmp_path / "data"
    setup(root)
    with pytest.raises(DataError, match=match):
        load_splits(root, SMALL)


def test_digits_dataset():
    train, val, test = (DigitsDataset(s, SMALL) for s in ("train", "validation", "test"))
    assert (len(train), len(val), len(test)) == (1079, 359, 359)
    assert train.classes == [str(d) for d in range(10)] and set(np.bincount(test.labels)) <= {35, 36, 37}
    x, y = train[0]
    assert x.shape == (3, 12, 12) and x.dtype == np.float32 and 0 <= y <= 9
    s = load_splits(None, SMALL, validation_fraction=0.2)
    assert s.source["kind"] == "digits" and s.source["counts"] == {"train": 1079, "validation": 359, "test": 359}
    # load_splits(None) is the digits' own split: the same images and labels, and a partition of all 1797
    for ours, direct in zip((s.train, s.validation, s.test), (train, val, test)):
        np.testing.assert_array_equal(ours.images, direct.images)
        np.testing.assert_array_equal(ours.labels, direct.labels)

    def rows(*parts):  # (pixels, label) rows of the parts, in a canonical order
        a = np.concatenate([np.column_stack([d.images.reshape(len(d), -1), d.labels]) for d in parts])
        return a[np.lexsort(a.T[::-1])]

    np.testing.assert_array_equal(rows(s.train, s.validation, s.test), rows(DigitsDataset("all")))
    assert not np.array_equal(load_splits(None, SMALL, 0.2, 0.2, seed=1).test.images, s.test.images)
    with pytest.raises(DataError, match="unknown digits split"):
        DigitsDataset("dev")


def test_subset_is_stratified_and_seeded():
    ds = DigitsDataset("all", SMALL)
    sub = subset(ds, 100, seed=1)
    assert len(sub) == 100 and set(np.bincount(sub.labels)) <= {9, 10, 11}
    assert subset(ds, 100, seed=1).labels.tolist() == sub.labels.tolist()
    assert subset(ds, 10_000) is ds


# --- batching ---------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 2])
def test_iter_batches_order_and_dropping(tmp_path, workers):
    _folder(tmp_path / "data", {"a": 4, "b": 3})
    good = load_splits(tmp_path / "data", SMALL, test_fraction=0.0).train
    bad = _bad_files(tmp_path / "bad")
    ds = ImageFolderDataset(good.samples[:3] + [(p, 1) for p in bad] + good.samples[3:], good.classes, SMALL)
    with pytest.warns(DataWarning, match=r"skipped 3 unreadable images \(first: .*garbage.png: cannot decode"):
        batches = list(iter_batches(ds, batch_size=4, workers=workers, progress=False))
    indices = [i for _, _, idx in batches for i in idx]
    assert indices == [0, 1, 2, 6, 7, 8, 9]  # order kept, the 3 bad files (3, 4, 5) dropped
    assert [r.split(": ")[0] for r in ds.skipped] == [str(p) for p in bad]  # what JSON summaries count
    assert skipped_images(ds.skipped, ["x.jpg: link loop"]) == {"count": 4, "first": ds.skipped + ["x.jpg: link loop"]}
    assert [len(idx) for _, _, idx in batches] == [3, 2, 2]  # batches [0..3] [4..7] [8, 9] lose 3, then 4 and 5
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    assert x.dtype == np.float32 and x.shape == (7, 3, 12, 12) and y.dtype == np.int64
    np.testing.assert_array_equal(x[3], ds[6][0])
    assert y.tolist() == ds.labels[indices].tolist()


def test_iter_batches_strict_raises_through_workers(tmp_path):
    bad = _bad_files(tmp_path)
    ds = ImageFolderDataset([(p, 0) for p in bad], ["a"], SMALL, strict=True)
    with pytest.raises(DataError, match="garbage.png"):
        list(iter_batches(ds, 2, workers=1, progress=False))
    ds.strict = False
    with pytest.warns(DataWarning, match="skipped 3 .*--strict makes this an error"):
        assert list(iter_batches(ds, 2, workers=0, progress=False)) == []
    assert len(ds.skipped) == 3
    list(iter_batches(ds.select([]), 2, workers=0, progress=False))
    assert len(ds.skipped) == 3  # a pass over another dataset does not touch this one's record


# --- the real photos --------------------------------------------------------------------------

@pytest.mark.shared
@pytest.mark.skipif(not CLOTHING.is_dir(), reason=f"{CLOTHING} is absent")
def test_clothing_dataset_listing():
    s = load_splits(CLOTHING)
    assert len(s.classes) == 10 and "t-shirt" in s.classes
    assert s.source["counts"] == {"train": 3068, "validation": 341, "test": 372}
    assert len(s.source["file_list_hash"]) == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error", DataWarning)
        x, y, idx = next(iter_batches(subset(s.test, 8), 8, workers=0, progress=False))
    assert x.shape == (8, 3, 224, 224) and np.isfinite(x).all()
