"""engine/data's link rule: links are followed once, only inside the data root; loops, dangling
links, links out of the root and second paths to an image are skipped and counted (strict: errors)."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import pytest
from PIL import Image

from engine.data import DataError, DataWarning, Preprocess, list_images, load_splits

SMALL = Preprocess(16, 12)


def _data(root: Path) -> Path:
    """root/{train,test}/{a,b}/: 3 training and 1 test image per class."""
    for c in ("a", "b"):
        for split, n in (("train", 3), ("test", 1)):
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (40 * i, 100, 0)).save(root / split / c / f"{i}.png")
    return root


def _load(root, strict=False):
    """(splits, the DataWarning messages) of load_splits(root)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        s = load_splits(root, SMALL, strict=strict)
    return s, [str(w.message) for w in caught if issubclass(w.category, DataWarning)]


def _file_loop(r):
    os.symlink("b.jpg", r / "train/a/a.jpg")
    os.symlink("a.jpg", r / "train/a/b.jpg")


def _class_loop(r):
    os.symlink(".", r / "train/loopclass")


def _dangling(r):
    os.symlink("gone.jpg", r / "train/a/x.jpg")


def _out_of_root(r):
    (r.parent / "outside").mkdir()
    Image.new("RGB", (8, 8)).save(r.parent / "outside/o.png")
    os.symlink(r.parent / "outside/o.png", r / "train/a/o.png")


def _test_image_is_a_training_image(r):
    os.symlink("../../train/a/0.png", r / "test/a/leak.png")


def _class_twice(r):
    os.symlink("a", r / "train/a_again")


@pytest.mark.parametrize("make,n_skipped,reason", [
    (_file_loop, 2, "link loop"),
    (_class_loop, 1, r"loopclass: link loop \(to a folder above it\)"),
    (_dangling, 1, "x.jpg: dangling link to gone.jpg"),
    (_out_of_root, 1, "o.png: link out of the data root"),
    (_test_image_is_a_training_image, 1, r"leak.png: second path to .*train/a/0.png"),
    (_class_twice, 1, r"a_again: second path to .*train/a"),
])
def test_bad_links_are_skipped_and_counted_or_strict_errors(tmp_path, make, n_skipped, reason):
    root = _data(tmp_path / "data")
    make(root)
    s, msgs = _load(root)
    assert s.classes == ["a", "b"]  # no extra class made of a loop or a second path
    assert s.source["counts"] == {"train": 6, "validation": 0, "test": 2}
    assert len(s.skipped) == n_skipped
    assert len(msgs) == 1 and msgs[0].startswith(f"skipped {n_skipped} link")
    assert any(re.search(reason, m) for m in s.skipped)
    with pytest.raises(DataError, match=f"{n_skipped} links? under .*{reason}.*cannot be followed.*drop --strict"):
        load_splits(root, SMALL, strict=True)


def test_links_inside_the_root_are_followed_once(tmp_path):
    root = _data(tmp_path / "data")
    (root / "pool" / "deep").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "pool/deep/p.png")
    Image.new("RGB", (8, 8)).save(root / "pool/q.png")
    os.symlink("../../pool/deep", root / "train/a/sub")  # a folder one level down
    os.symlink("../../pool/q.png", root / "train/b/q.png")  # a file
    s, msgs = _load(root)
    assert not msgs and not s.skipped
    assert s.source["counts"]["train"] == 8
    names = {p.relative_to(root).as_posix() for p in s.train.paths}
    assert {"train/a/sub/p.png", "train/b/q.png"} <= names  # kept under the path that reached them
    assert load_splits(root, SMALL).source["file_list_hash"] == s.source["file_list_hash"]


def test_a_link_does_not_replace_the_file_it_points_to(tmp_path):
    """The file that is not a link is the one taken, even when the link comes first in sorted order."""
    root = _data(tmp_path / "data")
    os.symlink("2.png", root / "train/a/0_link.png")
    s, _ = _load(root)
    assert root / "train/a/2.png" in s.train.paths and root / "train/a/0_link.png" not in s.train.paths
    assert s.skipped == [f"{root / 'train/a/0_link.png'}: second path to {root / 'train/a/2.png'}"]


def test_list_images_uses_the_same_rule(tmp_path):
    root = _data(tmp_path / "data")
    _file_loop(root)
    with pytest.warns(DataWarning, match="skipped 2 links"):
        assert [p.name for p in list_images(root / "train" / "a")] == ["0.png", "1.png", "2.png"]
    with pytest.raises(DataError, match="link loop"):
        list_images(root / "train" / "a", strict=True)


def test_a_link_at_the_root_never_takes_the_place_of_the_folder_it_names(tmp_path):
    """root/abc -> train sorts before train/: the real train/ is still the train split, the link is
    the second path, and it is counted once although the root is listed more than once."""
    r = _data(tmp_path / "d")
    os.symlink("train", r / "abc")
    s, warned = _load(r)
    assert len(s.train) == 6 and len(s.test) == 2
    assert len(s.skipped) == 1 and s.skipped[0].startswith(f"{r / 'abc'}: second path to {r / 'train'}")
    assert len(warned) == 1


def test_class_folder_layout_a_link_to_a_class_is_skipped_once(tmp_path):
    """DIR/<class>/*: root/a_link -> zebra gives no class a_link, keeps zebra, counts the link once."""
    r = tmp_path / "c"
    for c in ("lion", "zebra"):
        (r / c).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (8, 8), (40 * i, 100, 0)).save(r / c / f"{i}.png")
    os.symlink("zebra", r / "a_link")
    os.symlink("gone.png", r / "dangling.png")
    s, _ = _load(r)
    assert s.classes == ["lion", "zebra"] and len(s.train) + len(s.test) == 10
    assert sorted(x.split(":")[0] for x in s.skipped) == [str(r / "a_link"), str(r / "dangling.png")]
