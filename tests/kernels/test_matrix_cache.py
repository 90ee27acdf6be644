"""The on-disk OPU matrix cache: a hit gives the very matrix a fresh draw gives; stale, corrupt
and unwritable caches are detected and the fit goes on."""
import os
import warnings

import numpy as np
import pytest

from kernels import matrix_cache
from kernels.matrix_cache import CacheWarning, MatrixCache
from kernels.projection import SimulatedOPU


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OTL_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setattr(matrix_cache, "MIN_BYTES", 0)
    monkeypatch.setattr(matrix_cache, "_warned", set())
    return tmp_path / "c" / matrix_cache.SUBDIR


def _bits(n=20, k=300, seed=0):
    return (np.random.default_rng(seed).random((n, k)) < 0.5).astype(np.uint8)


@pytest.mark.parametrize("dtype", ["int8", "bfloat16", "float32"])
def test_cached_matrix_equals_a_fresh_draw(cache, dtype):
    x = _bits()
    first = SimulatedOPU(64, seed=3, matrix_dtype=dtype, block_size=24).fit_transform(x)
    assert len(list(cache.glob("*.bin"))) == 1
    hit = SimulatedOPU(64, seed=3, matrix_dtype=dtype, block_size=24).fit_transform(x)
    fresh = SimulatedOPU(64, seed=3, matrix_dtype=dtype, block_size=24, disk_cache=False).fit_transform(x)
    np.testing.assert_array_equal(hit, fresh)
    np.testing.assert_array_equal(first, fresh)
    other_seed = SimulatedOPU(64, seed=4, matrix_dtype=dtype, block_size=24).fit_transform(x)
    assert not np.array_equal(other_seed, fresh) and len(list(cache.glob("*.bin"))) == 2


def test_corrupt_entry_is_detected_and_redrawn(cache):
    x = _bits()
    ref = SimulatedOPU(32, seed=1).fit_transform(x)
    (path,) = cache.glob("*.bin")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))
    with pytest.warns(CacheWarning, match=r"stale or corrupt \(its checksum does not match\)"):
        again = SimulatedOPU(32, seed=1).fit_transform(x)
    np.testing.assert_array_equal(again, ref)
    assert MatrixCache().load(SimulatedOPU(32, seed=1)._cache_params(300)) is not None  # rewritten, valid


def test_truncated_entry_is_detected(cache):
    x = _bits()
    SimulatedOPU(32, seed=1).fit_transform(x)
    (path,) = cache.glob("*.bin")
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.warns(CacheWarning, match=r"missing or not \d+ bytes"):
        SimulatedOPU(32, seed=1).fit_transform(x)


def test_stale_entry_with_valid_checksum_fails_the_fresh_draw_check(cache, monkeypatch):
    """An entry written by another RNG (same key, consistent checksum) is caught by re-drawing
    two components, then replaced."""
    x = _bits()
    opu = SimulatedOPU(32, seed=1)
    params = opu._cache_params(300)
    wrong = np.random.default_rng(0).integers(-100, 100, 2 * 32 * 300).astype(np.int8).view(np.uint8)
    MatrixCache().save(params, [wrong])
    with pytest.warns(CacheWarning, match=r"differ from a fresh draw"):
        y = opu.fit_transform(x)
    np.testing.assert_array_equal(y, SimulatedOPU(32, seed=1, disk_cache=False).fit_transform(x))


def test_unwritable_cache_runs_without_it_and_says_so_once(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("OTL_CACHE_DIR", str(blocker))  # mkdir under a file fails, even for root
    monkeypatch.setattr(matrix_cache, "MIN_BYTES", 0)
    monkeypatch.setattr(matrix_cache, "_warned", set())
    x = _bits()
    with pytest.warns(CacheWarning, match=r"cannot be written.*running without it") as rec:
        a = SimulatedOPU(32, seed=2).fit_transform(x)
        SimulatedOPU(32, seed=5).fit_transform(x)
    assert len([w for w in rec if issubclass(w.category, CacheWarning)]) == 1
    np.testing.assert_array_equal(a, SimulatedOPU(32, seed=2, disk_cache=False).fit_transform(x))


def test_size_bound_evicts_least_recently_used(cache, monkeypatch):
    x = _bits()
    entry = 2 * 32 * 300  # int8 bytes of one matrix
    monkeypatch.setenv("OTL_CACHE_MAX_BYTES", str(int(2.5 * entry)))
    for s in (1, 2):
        SimulatedOPU(32, seed=s).fit_transform(x)
    old = MatrixCache().key(SimulatedOPU(32, seed=1)._cache_params(300))
    os.utime(cache / f"{old}.json", (1, 1))  # seed 1: least recently used
    SimulatedOPU(32, seed=3).fit_transform(x)
    names = {p.stem for p in cache.glob("*.bin")}
    assert old not in names and len(names) == 2


def test_disabled_and_cleared(cache, monkeypatch):
    x = _bits()
    SimulatedOPU(32, seed=1).fit_transform(x)
    n, size = MatrixCache().clear()
    assert (n, size) == (1, 2 * 32 * 300) and not list(cache.iterdir())
    monkeypatch.setenv("OTL_CACHE_DIR", "off")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SimulatedOPU(32, seed=1).fit_transform(x)
    assert not list(cache.iterdir())


def test_clear_spares_a_live_writers_temporary_file(cache):
    """A killed writer's temp file goes; one a live writer holds locked (mid-write) stays."""
    import fcntl

    cache.mkdir(parents=True, exist_ok=True)
    dead, live = cache / ".m.bin.deadbeef.tmp", cache / ".m.bin.l1vew1te.tmp"
    dead.write_bytes(b"x")
    live.write_bytes(b"y")
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what atomic_write_bytes holds until its rename
        MatrixCache().clear()
        assert sorted(p.name for p in cache.iterdir()) == [live.name]


def test_cli_cache_listing_and_clear(cache, capsys):
    import json

    from engine.cli import main

    SimulatedOPU(32, seed=1).fit_transform(_bits())
    assert main(["cache", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["entries"] == 1 and out["bytes"] == 2 * 32 * 300 and out["path"] == str(cache)
    assert main(["cache", "--clear", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["removed"] == 1 and not list(cache.glob("*.bin"))
