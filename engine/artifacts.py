"""Manifests: what every artifact records about its inputs, and the checks made when it is read."""
from __future__ import annotations

import json
import platform
import time
from importlib import metadata
from pathlib import Path

from kernels.io import atomic_write_json, sha256_file

MANIFEST = "manifest.json"


class ArtifactError(ValueError):
    """An artifact that is missing, incomplete, corrupt or for something else."""


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
    if verify_files:
        for name, entry in manifest.get("files", {}).items():
            f = path.parent / entry["path"]
            if not f.exists() or f.stat().st_size != entry["bytes"]:
                raise ArtifactError(
                    f"{what} file {f} ({name}) is missing or has another size than its manifest records; "
                    "the folder was modified or half-copied: rebuild it"
                )
    return manifest


def verify_hashes(root: Path, manifest: dict) -> None:
    """Full content check (sha256) of every file the manifest lists."""
    for name, entry in manifest.get("files", {}).items():
        f = Path(root) / entry["path"]
        if sha256_file(f) != entry["sha256"]:
            raise ArtifactError(f"{f} ({name}) does not match the sha256 in its manifest: corrupt or replaced; rebuild it")
