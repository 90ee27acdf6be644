"""A build, loaded from its folder: manifest checks, preprocessing, and a runner for its artifact."""
from __future__ import annotations

from pathlib import Path

from engine.artifacts import ArtifactError, read_manifest, verify_hashes


class Build:
    """An `otl engines` build folder. `build.runner()` gives a Runner for its artifact.

    backend: None or "auto" runs the backend it was built for; "onnxruntime" also runs a TensorRT
    build (its ONNX files are there). verify: check every file's sha256, not only its size.
    """

    def __init__(self, build_dir, backend: str | None = None, threads: int | None = None, verify: bool = False):
        self.root = Path(build_dir)
        self.manifest = read_manifest(self.root, "build")
        if self.manifest.get("kind") != "otl-engine":
            raise ArtifactError(f"{self.root} holds a {self.manifest.get('kind')!r} manifest, not a build; "
                                "pass the folder `otl engines` wrote")
        if verify:
            verify_hashes(self.root, self.manifest)
        self.backend = self.manifest["backend"] if backend in (None, "auto") else backend
        self.threads = threads

    @property
    def key(self) -> str:
        return self.manifest["key"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def n_features(self) -> int:
        return int(self.manifest["cut"]["features"])

    @property
    def preprocess(self):
        from engine.data import Preprocess

        return Preprocess.from_dict(self.manifest["preprocess"])

    def describe(self) -> dict:
        m = self.manifest
        return {"build_dir": str(self.root), "key": m["key"], "model": m["model"], "cut": m["cut"]["name"],
                "weights": m["weights"]["id"], "precision": m["precision"], "backend": self.backend,
                "emulated": m.get("emulated", False), "features": self.n_features,
                "recipe": m.get("recipe", {"pool": "none", "resize": "crop"})}

    def artifact_path(self) -> Path:
        """The file this build's backend runs (an ONNX file, or a TensorRT plan)."""
        from engine.backends import artifact_for_build

        return artifact_for_build(self.backend, self.root, self.manifest)

    def runner(self):
        from engine.backends import runner_for_build

        return runner_for_build(self.backend, self.root, self.manifest, threads=self.threads)
