"""A built engine, loaded from its folder: manifest checks, preprocessing, and a runner."""
from __future__ import annotations

from pathlib import Path

from engine.artifacts import ArtifactError, read_manifest, verify_hashes


class Engine:
    """An `otl engines` build folder. `engine.runner()` gives a Runner for its precision."""

    def __init__(self, build_dir, backend: str | None = None, threads: int | None = None, verify: bool = False):
        self.root = Path(build_dir)
        self.manifest = read_manifest(self.root, "engine build")
        if self.manifest.get("kind") != "otl-engine":
            raise ArtifactError(f"{self.root} holds a {self.manifest.get('kind')!r} manifest, not an engine build; "
                                "pass the folder `otl engines` wrote")
        if verify:
            verify_hashes(self.root, self.manifest)
        self.backend = backend or self.manifest["backend"]
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

    def engine_file(self, backend: str) -> Path:
        files = self.manifest["files"]
        if backend == "tensorrt":
            if "plan" not in files:
                raise ArtifactError(f"{self.root} was built for {self.manifest['backend']}, it has no TensorRT plan; "
                                    "rebuild with `otl engines --backend tensorrt`")
            return self.root / files["plan"]["path"]
        p = self.precision
        name = "onnx_int8_onnxruntime" if p == "int8" else f"onnx_{p}"
        return self.root / files[name]["path"]

    def runner(self):
        from engine.runners import make_runner

        if self.backend == "torch":
            raise ArtifactError("an engine folder runs on onnxruntime or tensorrt; the torch reference runs the module")
        options = {"threads": self.threads}
        if self.backend == "tensorrt":
            options = {"expected": self.manifest.get("device")}
        return make_runner(self.backend, self.engine_file(self.backend), **options)
