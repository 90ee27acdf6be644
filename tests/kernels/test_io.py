"""kernels.io: atomic writes."""
import stat

from kernels.io import atomic_write_bytes, atomic_write_json


def test_atomic_write_replaces_whole_files_with_ordinary_permissions(tmp_path):
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    p = atomic_write_bytes(tmp_path / "a.bin", b"first")
    atomic_write_bytes(p, b"second")
    assert p.read_bytes() == b"second"
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.bin", "plain.bin"]  # no temporary left behind
    # the same mode open() gives (the temporary file starts as 0600)
    assert stat.S_IMODE(p.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)
    j = atomic_write_json(tmp_path / "sub" / "m.json", {"k": 1})
    assert j.read_text().strip().startswith("{") and stat.S_IMODE(j.stat().st_mode) == stat.S_IMODE(plain.stat().st_mode)


def test_a_killed_writers_temporary_file_is_removed_by_the_next_write(tmp_path):
    import fcntl
    import os

    stale = tmp_path / ".a.bin.k1ll3d_0.tmp"  # what a writer killed before its rename leaves
    stale.write_bytes(b"half")
    live = tmp_path / ".a.bin.w0rk1ng_.tmp"  # a writer still writing holds its file locked
    live.write_bytes(b"")
    other = tmp_path / ".b.bin.k1ll3d_0.tmp"  # another target's: not this write's business
    other.write_bytes(b"")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"whole")
    finally:
        os.close(fd)
    assert sorted(f.name for f in tmp_path.iterdir()) == [live.name, other.name, "a.bin"]
    assert (tmp_path / "a.bin").read_bytes() == b"whole"
