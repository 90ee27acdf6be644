"""Files every layer writes: atomic writes (temp file + os.replace) and sha256 hashing.

A writer holds an flock on its temporary file until the rename, so the next write to the same
target can tell a dead writer's leftover (unlocked: removed) from a live one's (locked: kept).

In kernels/ because kernels/ is the bottom of the dependency order (engine -> calibration ->
kernels), so every package may import it.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask: from /proc/self/status (Linux) when it says, since the portable way to read
    it sets it, and a file another thread creates in between would get no mask at all."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)  # elsewhere: set it straight back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and os.replace.

    A reader never sees a half-written file: either the old file or the new one. Temporary files
    of earlier writers to `path` that were killed are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = _locked_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp makes 0600; give what open() would
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.replace(tmp, path)  # still locked: a cleaner never takes a file being renamed
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _locked_temp(path: Path) -> tuple[int, str]:
    """(fd, name) of a new temporary file beside `path`, flocked by this process."""
    while True:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        fcntl.flock(fd, fcntl.LOCK_EX)
        if os.fstat(fd).st_nlink:  # else a cleaner removed it between mkstemp and flock
            return fd, tmp
        os.close(fd)


def remove_stale_temps(path: Path) -> list[Path]:
    """Remove the temporary files atomic_write_bytes left beside `path` when killed (those no live
    writer holds locked). Returns what was removed."""
    return _remove_unlocked(path.parent, rf"\.{re.escape(path.name)}\.[a-z0-9_]{{8}}\.tmp")


def remove_stale_temps_in(folder: Path) -> list[Path]:
    """remove_stale_temps for every file of `folder` at once (a cache being cleared)."""
    return _remove_unlocked(Path(folder), r"\..+\.[a-z0-9_]{8}\.tmp")


def _remove_unlocked(folder: Path, name_pattern: str) -> list[Path]:
    pattern = re.compile(name_pattern)
    return [f for f in folder.iterdir() if pattern.fullmatch(f.name) and _unlink_if_unlocked(f)]


def _unlink_if_unlocked(f: Path) -> bool:
    try:
        fd = os.open(f, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # a live writer
    else:
        f.unlink(missing_ok=True)
        return True
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-serializable object, independent of key order."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()
