"""Manifests: what every artifact records about its inputs, and the checks made when it is read;
artifact folders written aside and swapped in, under a lock on their target.

    with target_lock(out, "otl engines is building"), staged_folder(out, "otl-engine") as tmp:
        ...write files into tmp, write_manifest(tmp, ...) last...
    # out is now the new folder; until here it was the previous one, untouched

A folder's manifest names its files by paths relative to the folder, so the staged folder can be
renamed. Staged folders of killed runs (`.OUT.build-XXXXXXXX`) are removed by the next run into
the same target, which holds the lock, so no live run owns them.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Iterator

from kernels.io import atomic_write_json, current_umask, sha256_file

MANIFEST = "manifest.json"
LOCK_GRACE_S = 0.5  # how long a run waits for a locked target before it refuses


class ArtifactError(ValueError):
    """An artifact that is missing, incomplete, corrupt or for something else."""


class TargetBusyError(ArtifactError):
    """Another process is writing the same artifact folder."""


def library_versions(*extra: str) -> dict:
    names = ("otl", "torch", "torchvision", "onnx", "onnxruntime", "numpy", "scipy") + extra
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = None
    return out


def file_entry(path: Path, root: Path) -> dict:
    return {"path": str(path.relative_to(root)), "sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(root: Path, manifest: dict) -> Path:
    """Written last and atomically: a folder without a manifest is an interrupted build."""
    manifest = dict(manifest, written=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    return atomic_write_json(Path(root) / MANIFEST, manifest)


def read_manifest(root: Path, what: str = "build", verify_files: bool = True) -> dict:
    root = Path(root)
    path = root / MANIFEST if root.is_dir() else root
    if not path.exists():
        raise ArtifactError(
            f"{root} has no {MANIFEST}: not a {what} folder, or its build was interrupted. "
            f"Rebuild it (the command that makes a {what} writes the manifest last)."
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ArtifactError(f"{path} is not a readable manifest ({e}); delete the folder and rebuild it") from e
    _check_paths(path.parent, manifest, what)
    if verify_files:
        for name, entry in manifest.get("files", {}).items():
            f = path.parent / entry["path"]
            if not f.exists() or f.stat().st_size != entry["bytes"]:
                raise ArtifactError(
                    f"{what} file {f} ({name}) is missing or has another size than its manifest records; "
                    "the folder was modified or half-copied: rebuild it"
                )
    return manifest


def _check_paths(root: Path, manifest: dict, what: str) -> None:
    """Every path the manifest names (its files; a build's artifact) must stay inside `root`."""
    named = {name: entry.get("path") if isinstance(entry, dict) else entry
             for name, entry in manifest.get("files", {}).items()}
    if manifest.get("kind") == "otl-engine":  # (a store's "engine" is the build that made it)
        named.update({k: manifest[k] for k in ("artifact", "engine") if k in manifest})
    for name, rel in named.items():
        inside(root, rel, f"{what} manifest {root / MANIFEST} ({name})")


def inside(root: Path, rel, what: str) -> Path:
    """root / rel, refused (ArtifactError) unless it is a relative path that stays inside `root`,
    symbolic links followed: a crafted or edited manifest must not make a reader open or hash
    files elsewhere. `what` names who gave the path in the error."""
    if not isinstance(rel, str) or not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ArtifactError(f"{what} names the path {rel!r}; expected a path relative to the folder, inside it. "
                            "The manifest was edited or crafted: rebuild the folder, and do not trust its files")
    full = Path(root) / rel
    if not full.resolve().is_relative_to(Path(root).resolve()):
        raise ArtifactError(f"{what} names {rel!r}, which leads outside the folder (to {full.resolve()}) through a "
                            "symbolic link; artifact files must lie inside their folder: rebuild it")
    return full


def verify_hashes(root: Path, manifest: dict) -> None:
    """Full content check (sha256) of every file the manifest lists."""
    for name, entry in manifest.get("files", {}).items():
        f = Path(root) / entry["path"]
        if sha256_file(f) != entry["sha256"]:
            raise ArtifactError(f"{f} ({name}) does not match the sha256 in its manifest: corrupt or replaced; rebuild it")


@contextlib.contextmanager
def target_lock(path: Path, doing: str) -> Iterator[None]:
    """Hold an exclusive lock on the artifact folder `path` (the file .NAME.lock beside it, holding
    the pid) or raise TargetBusyError at once; `doing` ("otl engines is building") words the error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / f".{path.name}.lock"
    fd = _acquire(lock, path, doing)
    try:
        os.ftruncate(fd, 0)  # a killed holder left its pid
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)  # while still locked: see _acquire
        os.close(fd)


def _acquire(lock: Path, path: Path, doing: str) -> int:
    """A descriptor of `lock`, flocked. The holder removes the file before it unlocks, so a lock
    taken on a file that is no longer the one at `lock` is retried on the new file."""
    deadline = time.monotonic() + LOCK_GRACE_S
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if time.monotonic() < deadline:  # perhaps a run that only tidies (milliseconds)
                time.sleep(0.05)
                continue
            raise TargetBusyError(f"another {doing} {path} (pid {pid}); wait for it or use another --out") from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def tidy(path: Path, doing: str) -> None:
    """remove_stale_staging(path) when no other run holds `path` locked (before a run decides to
    reuse an artifact: it also cleans up after killed runs); else leave it to that run. A folder
    it may not write to (a shared, read-only build) is left as it is."""
    try:
        with target_lock(path, doing):
            remove_stale_staging(Path(path))
    except (TargetBusyError, OSError):
        pass


@contextlib.contextmanager
def staged_folder(path: Path, kind: str) -> Iterator[Path]:
    """A new empty folder beside `path` (same file system: the rename is atomic) to write the next
    version of the artifact (manifest kind `kind`) into. When the block ends it replaces `path`; on
    an error it is removed and `path` is left as it was. Call under target_lock(path): it first
    removes stale staged folders."""
    path = Path(path)
    remove_stale_staging(path)
    _check_replaceable(path, kind)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.build-", dir=path.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; give what mkdir would
        yield tmp
        swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def swap_in(tmp: Path, path: Path) -> None:
    """Rename the complete folder `tmp` to `path`, replacing a previous one only now."""
    if not path.exists():
        os.replace(tmp, path)
        return
    old = _old_name(path)  # none here: remove_stale_staging ran under the same lock
    os.replace(path, old)
    os.replace(tmp, path)  # killed between the two renames: remove_stale_staging renames old back
    os.replace(old, tmp)  # removed under a staged folder's name: killed while removing, it is stale
    shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_staging(path: Path) -> list[Path]:
    """Remove what killed runs into `path` left beside it: staged folders (.NAME.build-XXXXXXXX, and
    .NAME.XXXXXXXX from feature stores of earlier versions) and a previous version the swap had set
    aside (.NAME.old), which is renamed back when `path` itself is gone. Returns what was removed."""
    path = Path(path)
    old = _old_name(path)
    if old.is_dir() and not path.exists():
        os.replace(old, path)
    staged = re.compile(rf"\.{re.escape(path.name)}\.(build-)?[a-z0-9_]{{8}}")
    removed = [d for d in path.parent.iterdir() if d.is_dir() and not d.is_symlink() and staged.fullmatch(d.name)]
    removed += [old] if old.is_dir() else []
    for d in removed:
        shutil.rmtree(d, ignore_errors=True)
    return removed


def _check_replaceable(path: Path, kind: str) -> None:
    """Refuse to replace a folder that is not an earlier `kind` artifact (it would be deleted), and a
    symbolic link (the swap would replace the link and leave the folder it names behind)."""
    if path.is_symlink():
        raise ArtifactError(f"{path} is a symbolic link (to {os.readlink(path)}); the new artifact would "
                            f"replace the link, not the folder: pass --out {path.resolve()}")
    if not path.exists() or (path.is_dir() and not any(path.iterdir())):
        return
    try:
        found = json.loads((path / MANIFEST).read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        found = None
    if found != kind:
        what = f"a {found!r} artifact" if found else f"not an otl artifact (no readable {MANIFEST})"
        raise ArtifactError(f"{path} exists and is {what}; writing a {kind} there would replace it: "
                            "choose another --out, or delete it first")


def _old_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.old")
