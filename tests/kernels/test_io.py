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
