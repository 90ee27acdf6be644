"""Walking a data folder under one rule for symbolic links (FolderScan); every folder scan of
engine/data, and predict's folders, use it.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from engine.data.errors import NAMED_SKIPPED, DataError, DataWarning

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


def is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


class FolderScan:
    """One load's walk of a data root under the link rule (decided in _reach):

    A link, to a file or a folder, is followed once, and only when its target resolves inside the
    data root. These are skipped and counted like unreadable images (one DataWarning naming the
    first few; with strict=True one DataError instead):
      - a dangling link (its target does not exist)
      - a link loop (a.jpg -> b.jpg -> a.jpg, or a folder linking to itself or to a folder above
        it, e.g. train/x -> .)
      - a link whose target lies outside the data root
      - a link to a file or folder reached another way already (a second path to the same image
        would count it twice, or leak a training image into the test split)
    Files and folders that are not links are taken first (reserve() records those under the
    folders a load reads before the walk); between two links to the same target, the first in
    sorted order (train/ before validation/ and test/) is taken. Hidden entries (a name starting
    with ".") are ignored, as are files that are not images.
    """

    def __init__(self, root: Path, strict: bool = False):
        self.root, self.strict = Path(root), strict
        self.real_root = self.root.resolve()
        self._reached: dict[Path, Path] = {self.real_root: self.root}  # real path -> the path that took it
        self._plain: set[Path] = set()  # the reserved paths (not links): taken without resolving them again
        self.skipped: list[tuple[Path, str]] = []  # (path, why it was not taken)
        self._skipped_paths: set[Path] = set()

    def reserve(self, folder: Path, recursive: bool = True) -> None:
        """Record every entry under folder (recursive=False: in folder) that is not a link (a walk that
        follows no link)."""
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            names = dirnames + filenames
            if not recursive:
                dirnames.clear()
            real_dir = Path(os.path.realpath(dirpath))
            for name in names:
                p = Path(dirpath, name)
                if not p.is_symlink() and self._reached.setdefault(real_dir / name, p) == p:
                    self._plain.add(p)

    def subdirs(self, folder: Path) -> list[Path]:
        """folder's visible subfolders that the link rule takes, sorted."""
        return [p for p in self._entries(folder) if p.is_dir()]

    def images(self, folder: Path) -> list[Path]:
        """Image files under folder, recursive and sorted, that the link rule takes."""
        found = []
        for p in self._entries(folder):
            if p.is_dir():
                found += self.images(p)
            elif is_image_name(p.name):
                found.append(p)
        return sorted(found)

    def finish(self) -> list[str]:
        """The skipped entries as "path: why", after one DataWarning about them; DataError when strict."""
        reasons = [f"{p}: {why}" for p, why in self.skipped]
        if not reasons:
            return []
        n = len(reasons)
        text = (f"{n} link{'s' * (n > 1)} under {self.root} "
                f"({'; '.join(reasons[:NAMED_SKIPPED])}{'; ...' if n > NAMED_SKIPPED else ''})")
        if self.strict:
            raise DataError(f"{text} cannot be followed: links are followed once and only inside the data folder; "
                            "fix or remove them, or drop --strict to skip them")
        warnings.warn(f"skipped {text}", DataWarning, stacklevel=3)
        return reasons

    def _entries(self, folder: Path) -> list[Path]:
        """folder's visible entries that the link rule takes; the others are recorded in skipped."""
        kept = []
        for name in sorted(os.listdir(folder)):
            if name.startswith("."):
                continue
            p = Path(folder, name)
            reason = self._reach(p)
            if reason is None:
                kept.append(p)
            elif (is_image_name(name) or not os.path.isfile(p)) and p not in self._skipped_paths:
                self.skipped.append((p, reason))  # once, however often its folder is listed
                self._skipped_paths.add(p)
        return kept

    def _reach(self, p: Path) -> str | None:
        """None when the rule takes p (and it is now reached), else why it is skipped."""
        if p in self._plain:
            return None
        try:
            real = p.resolve(strict=True)
        except FileNotFoundError:
            return f"dangling link to {os.readlink(p)}"
        except (RuntimeError, OSError):  # Python < 3.13 reports a loop as RuntimeError
            return "link loop"
        owner = self._reached.get(real)
        if owner == p:
            return None
        if not real.is_relative_to(self.real_root):
            return f"link out of the data root (to {real})"
        here = p.parent.resolve()
        if real == here or real in here.parents:
            return "link loop (to a folder above it)"
        if owner is not None:
            return f"second path to {owner}"
        self._reached[real] = p
        return None
