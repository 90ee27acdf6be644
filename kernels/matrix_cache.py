"""On-disk cache of simulated OPU matrices: drawn once per machine, reused by every later fit.

Drawing R for 62,720 bits x 4,000 components is 5e8 Gaussians, about 5 s on 2 cores, which is
most of a small fit. The matrix depends only on (RNG scheme, seed, d input bits, k components,
storage dtype, block layout), so it is cached under that key in the user's cache folder:

    $OTL_CACHE_DIR or $XDG_CACHE_HOME/otl or ~/.cache/otl  /  opu-matrices/<key>.bin + <key>.json

<key>.bin holds the blocks' raw bytes; <key>.json (written last, so its presence marks a complete
entry) holds the key's parameters, the byte count and a CRC-32. A load checks all three and
load_or_draw re-draws two components to compare, so a stale or corrupt entry is detected, removed
and redrawn. Writes are atomic; the folder is bounded (OTL_CACHE_MAX_BYTES, default 8 GiB,
least recently used entries go first); OTL_CACHE_DIR=off disables it; a folder that cannot be
written is reported once and the fit runs without a cache. `otl cache --clear` empties it.
"""
from __future__ import annotations

import json
import os
import time
import warnings
import zlib
from pathlib import Path

import numpy as np

from kernels.io import atomic_write_bytes, atomic_write_json, remove_stale_temps_in, sha256_json
from kernels.opu_matrix import ITEMSIZE

SUBDIR = "opu-matrices"
DEFAULT_MAX_BYTES = 8 << 30
MIN_BYTES = 8 << 20  # smaller matrices draw in well under a second: not worth a file
_warned: set[str] = set()


class CacheWarning(UserWarning):
    """The matrix cache could not be used (not writable, or an entry was stale or corrupt)."""


def _warn_once(tag: str, msg: str) -> None:
    if tag not in _warned:
        _warned.add(tag)
        warnings.warn(msg, CacheWarning, stacklevel=3)


def cache_root() -> Path | None:
    """The cache folder, or None when disabled (OTL_CACHE_DIR=off)."""
    env = os.environ.get("OTL_CACHE_DIR")
    if env is not None:
        return None if env.strip().lower() in ("", "off", "0", "none") else Path(env).expanduser() / SUBDIR
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "otl" / SUBDIR


def max_bytes() -> int:
    env = os.environ.get("OTL_CACHE_MAX_BYTES")
    try:
        return int(float(env)) if env else DEFAULT_MAX_BYTES
    except ValueError:
        raise ValueError(f"OTL_CACHE_MAX_BYTES={env!r}: expected a number of bytes, e.g. 8e9") from None


def _crc(buf) -> int:
    return zlib.crc32(memoryview(buf).cast("B")) & 0xFFFFFFFF


class MatrixCache:
    """Entries keyed by a dict of parameters; values are lists of numpy byte buffers."""

    def __init__(self, root: Path | None = None, limit: int | None = None):
        self.root = cache_root() if root is None else Path(root)
        self.limit = max_bytes() if limit is None else int(limit)

    @staticmethod
    def key(params: dict) -> str:
        return sha256_json(params)[:32]

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.bin", self.root / f"{key}.json"

    def load(self, params: dict) -> np.ndarray | None:
        """The entry's bytes (uint8), or None when missing; a stale or corrupt entry is removed."""
        if self.root is None:
            return None
        key = self.key(params)
        bin_path, meta_path = self._paths(key)
        if not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text())
            problem = None
            if meta.get("params") != json.loads(json.dumps(params)):
                problem = "its parameters differ from its key"
            elif not bin_path.is_file() or bin_path.stat().st_size != meta.get("nbytes"):
                problem = f"{bin_path.name} is missing or not {meta.get('nbytes')} bytes"
            else:
                buf = np.fromfile(bin_path, dtype=np.uint8)
                if _crc(buf) != meta.get("crc32"):
                    problem = "its checksum does not match"
        except (OSError, ValueError) as e:
            problem = f"it cannot be read ({type(e).__name__}: {e})"
        if problem:
            self.discard(params, f"{problem}")
            return None
        try:
            os.utime(meta_path)  # recently used: evicted last
        except OSError:
            pass
        return buf

    def discard(self, params: dict, why: str) -> None:
        key = self.key(params)
        _warn_once(f"stale:{key}", f"OPU matrix cache entry {self.root / key}.bin is stale or corrupt ({why}); "
                                   "it was removed and the matrix is drawn again")
        for p in self._paths(key):
            try:
                p.unlink()
            except OSError:
                pass

    def save(self, params: dict, buffers: list) -> bool:
        """Write an entry atomically (bytes first, metadata last). False when it cannot be written."""
        if self.root is None:
            return False
        nbytes = sum(int(b.nbytes) for b in buffers)
        if nbytes > self.limit:
            return False
        key = self.key(params)
        bin_path, meta_path = self._paths(key)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            self._evict(nbytes)
            data = b"".join(memoryview(np.ascontiguousarray(b)).cast("B") for b in buffers)
            atomic_write_bytes(bin_path, data)
            atomic_write_json(meta_path, {"params": params, "nbytes": nbytes, "crc32": _crc(data),
                                          "created": time.time()})
            return True
        except OSError as e:
            _warn_once("unwritable", f"the OPU matrix cache {self.root} cannot be written ({type(e).__name__}: "
                                     f"{e}); running without it (set OTL_CACHE_DIR to a writable folder, or "
                                     "OTL_CACHE_DIR=off)")
            return False

    def entries(self) -> list[tuple[Path, int, float]]:
        """(metadata path, bytes, last used) of each complete entry, least recently used first."""
        if self.root is None or not self.root.is_dir():
            return []
        out = []
        for meta in self.root.glob("*.json"):
            b = meta.with_suffix(".bin")
            try:
                out.append((meta, b.stat().st_size if b.exists() else 0, meta.stat().st_mtime))
            except OSError:
                continue
        return sorted(out, key=lambda e: e[2])

    def _evict(self, incoming: int) -> None:
        entries = self.entries()
        total = sum(e[1] for e in entries)
        for meta, size, _ in entries:
            if total + incoming <= self.limit:
                break
            for p in (meta.with_suffix(".bin"), meta):
                try:
                    p.unlink()
                except OSError:
                    pass
            total -= size

    def clear(self) -> tuple[int, int]:
        """Remove every entry, and the temporary files of killed writers (a live writer's stays) ->
        (entries, bytes) removed."""
        if self.root is None or not self.root.is_dir():
            return 0, 0
        entries = self.entries()
        for p in self.root.iterdir():
            if p.suffix in (".bin", ".json"):
                try:
                    p.unlink()
                except OSError:
                    pass
        remove_stale_temps_in(self.root)
        return len(entries), sum(e[1] for e in entries)


# ----------------------------------------------------------------------------- SimulatedOPU's use
def load_or_draw(matrix, use_disk: bool = True) -> list:
    """The blocks of `matrix` (opu_matrix.FastMatrix), in its matrix_dtype: from this cache when a
    verified entry exists, else drawn (and saved when use_disk and the matrix is worth a file)."""
    import torch

    cache = MatrixCache() if use_disk and matrix.nbytes >= MIN_BYTES else None
    params = matrix.cache_params()
    if cache is not None and (buf := cache.load(params)) is not None:
        blocks = _blocks_from_bytes(matrix, buf)
        if _matches_fresh_draw(matrix, blocks):
            return blocks
        cache.discard(params, "its values differ from a fresh draw of the same components")
    blocks = [matrix.draw_block(j, keep=True) for j in range(matrix.n_blocks)]
    if cache is not None:
        cache.save(params, [b.contiguous().view(torch.uint8).numpy() for b in blocks])
    return blocks


def _blocks_from_bytes(matrix, buf) -> list:
    import torch

    dtype, d = getattr(torch, matrix.matrix_dtype), matrix.n_features
    out, off = [], 0
    for j in range(matrix.n_blocks):
        c0, c1 = matrix.columns(j)
        nbytes = 2 * (c1 - c0) * d * ITEMSIZE[matrix.matrix_dtype]
        out.append(torch.from_numpy(buf[off:off + nbytes]).view(dtype).reshape(2 * (c1 - c0), d))
        off += nbytes
    return out


def _matches_fresh_draw(matrix, blocks: list) -> bool:
    """Re-draw the first and last components and compare them with the cached rows."""
    import torch

    for c in {0, matrix.n_components - 1}:
        j, i = divmod(c, matrix.width)
        fresh = matrix.stored(torch.from_numpy(matrix.draw_components(c, c + 1)))
        w = blocks[j].shape[0] // 2
        if not (torch.equal(blocks[j][i], fresh[0]) and torch.equal(blocks[j][w + i], fresh[1])):
            return False
    return True
