"""kernels/__init__.py: the public API is importable from the package, lazily; kernels/ is the
bottom layer (imports nothing from engine/ or calibration/)."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import kernels

KERNELS = Path(kernels.__file__).parent


def test_import_kernels_loads_no_numerics():
    code = ("import sys, kernels; heavy = [m for m in ('numpy', 'torch', 'scipy', 'cupy', 'lightonml') "
            "if m in sys.modules]; assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=KERNELS.parent)


def test_every_export_is_its_module_attribute():
    import importlib

    for module, names in kernels._EXPORTS.items():
        mod = importlib.import_module(f"kernels.{module}")
        for name in names:
            assert getattr(kernels, name) is getattr(mod, name), name
    assert sorted(kernels.__all__) == sorted(n for names in kernels._EXPORTS.values() for n in names)
    assert len(set(kernels.__all__)) == len(kernels.__all__)  # one name, one meaning
    with pytest.raises(AttributeError, match="has no attribute 'select_alpha'"):
        kernels.select_alpha  # noqa: B018  (removed: selection lives in kernels/selection.py)


def test_kernels_imports_only_itself_among_the_project_packages():
    for path in sorted(KERNELS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert name.split(".")[0] not in ("engine", "calibration"), f"{path.name} imports {name}"
