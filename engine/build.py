"""`otl engines`: backbone cut -> ONNX fp32 -> fp16 / int8 graph -> backend artifact, with a manifest.

A build (folder) holds one backbone cut at one precision for one backend: its ONNX files, the
artifact the backend runs (the ONNX file itself, or a TensorRT plan) and manifest.json, written
last. The manifest's key hashes everything that changes the result, so an unchanged request reuses
the build and a changed one rebuilds it. A rebuild is written into a staged folder beside the
target, under a lock on the target, and swapped in when complete: until then the previous build
stays whole and usable, and a failed or killed rebuild leaves it as it was. `Build`
(engine/build_folder.py) loads one.
"""
from __future__ import annotations

import dataclasses
import shutil
from dataclasses import dataclass
from pathlib import Path

from engine.artifacts import (ArtifactError, file_entry, library_versions, read_manifest, staged_folder, target_lock,
                              tidy, write_manifest)
from engine.export import EXPORT_BATCH
from engine.timing import Timings
from kernels.io import sha256_json

PRECISIONS = ("fp32", "fp16", "int8")
BUILD_VERSION = 2  # 2: int8 bias correction and amax refinement


class BuildError(ValueError):
    pass


@dataclass
class BuildConfig:
    model: str = "densenet169"
    cut: str | None = None  # None: the model's default cut
    weights: str = "imagenet"  # imagenet | random | PATH
    seed: int = 0
    precision: str = "fp32"
    backend: str = "auto"
    input_size: int | None = None  # None: 9/7 of the weights' crop, in steps of 32 (288 for 224: default_input_size)
    pool: str | None = None  # none | avg | avgN: pooling at the cut, in the ONNX graph; None: avg3 (avg2 / avg on maps < 3x3)
    resize: str = "crop"  # crop (torchvision's weights transforms) | squash (the reference's Resize((s, s)))
    out: str | None = None  # None: builds/<model>-<cut>[-recipe]-<weights>-<precision> (default_out)
    data: str | None = None  # calibration images for int8 (None: embedded digits)
    calibration_images: int = 512
    calibration_method: str = "entropy"
    keep_fp32: int = 3  # int8: the first N quantizable activations (graph order) stay fp32
    bias_correction: bool = True  # int8: biases absorb the mean error of the int8 weights
    refine_images: int = 0  # int8: > 0 picks each amax by output error on this many images
    batch_size: int = 32  # also the TensorRT profile's optimal batch
    threads: int | None = None
    force: bool = False
    verbose: bool = False
    progress: bool | None = False  # bars on stderr (None: when it is a terminal; the CLI: unless --quiet)
    max_batch: int = 256  # the TensorRT profile's largest batch


@dataclass
class Recipe:
    """What a BuildConfig resolves to before anything is exported."""

    cut: str
    preprocess: object  # engine.data.Preprocess
    weights_id: str
    input_size: int
    pool: str
    out: Path


def check_config(cfg: BuildConfig) -> None:
    from engine.backbones import model_info, pool_grid
    from engine.backends import BACKENDS, buildable
    from engine.data import RESIZE_MODES

    model_info(cfg.model)
    _check_numbers(cfg)
    if cfg.pool is not None:
        pool_grid(cfg.pool)
    if cfg.resize not in RESIZE_MODES:
        raise BuildError(f"unknown resize {cfg.resize!r}; expected one of {', '.join(RESIZE_MODES)} "
                         "(crop: torchvision's resize + center crop; squash: the reference's Resize((s, s)))")
    if cfg.precision not in PRECISIONS:
        raise BuildError(f"unknown precision {cfg.precision!r}; expected one of {', '.join(PRECISIONS)}")
    if cfg.backend not in BACKENDS:
        raise BuildError(f"unknown backend {cfg.backend!r}; expected one of {', '.join(BACKENDS)}")
    if not buildable(cfg.backend):
        raise BuildError(f"the {cfg.backend} backend is the reference and needs no build; "
                         "build for onnxruntime or tensorrt")


def _check_numbers(cfg: BuildConfig) -> None:
    """The CLI's ranges (engine/cli/args.py), for API users: refused before anything is built."""
    from engine.checks import MIN_INPUT_SIZE, check_int, check_optional_int, check_run_numbers

    check_run_numbers(cfg)  # seed, threads, batch_size
    check_optional_int("input_size", cfg.input_size, MIN_INPUT_SIZE)
    check_int("max_batch", cfg.max_batch, cfg.batch_size)


def default_out(cfg: BuildConfig, cut_name: str, pool: str) -> Path:
    """builds/<model>-<cut>[-fullmap|-avgN][-squash]-<weights>-<precision>: the recipe's non-default parts."""
    from engine.backbones import DEFAULT_POOL

    w = cfg.weights if cfg.weights in ("imagenet", "random") else Path(cfg.weights).stem
    recipe = "" if pool in (DEFAULT_POOL, "avg") and cfg.pool is None else f"-{'fullmap' if pool == 'none' else pool}"
    recipe += "-squash" if cfg.resize == "squash" else ""
    return Path("builds") / f"{cfg.model}-{cut_name}{recipe}-{w}-{cfg.precision}"


def resolve_recipe(cfg: BuildConfig) -> Recipe:
    """Cut, preprocessing, weights id, input size, pooling and output folder; checked on the meta device."""
    from engine import backbones

    cut = backbones.resolve(cfg.model, cfg.cut)
    backbones.check_weights_spec(cfg.weights)
    preprocess = backbones.preprocess_for(cfg.model, cfg.weights)
    wid = backbones.weights_id(cfg.weights, cfg.seed, cfg.model)
    size = cfg.input_size or backbones.default_input_size(preprocess.crop_size)
    if size != preprocess.crop_size:  # keep the weights' resize/crop ratio (256/224 for ImageNet)
        ratio = preprocess.resize_size / preprocess.crop_size
        preprocess = dataclasses.replace(preprocess, crop_size=size, resize_size=int(round(size * ratio)))
    if cfg.resize != "crop":
        preprocess = dataclasses.replace(preprocess, resize=cfg.resize)
    pool = cfg.pool
    shape = backbones.cut_map_shape(cfg.model, cut.name, size)  # a map < 1x1 fails here, with the smallest size
    backbones.check_memory(cfg.model, cut.name, size, EXPORT_BATCH)  # before the build folder is made
    if pool != "none":
        pool = backbones.default_pool(shape) if pool is None else pool
        backbones.check_pool(pool, cfg.model, cut.name, shape, size)
    out = Path(cfg.out) if cfg.out else default_out(cfg, cut.name, pool)
    return Recipe(cut=cut.name, preprocess=preprocess, weights_id=wid, input_size=size, pool=pool, out=out)


def key_parts(cfg: BuildConfig, r: Recipe, backend: str, calib) -> dict:
    """Everything the build's result depends on; the manifest key is their sha256."""
    parts = {
        "build_version": BUILD_VERSION, "model": cfg.model, "cut": r.cut, "weights": r.weights_id,
        "input_size": r.input_size, "precision": cfg.precision, "backend": backend,
        "preprocess": r.preprocess.to_dict(), "torch": library_versions()["torch"],
    }
    if r.pool != "none":  # left out when "none", so keys of builds made before pooling stay valid
        parts["pool"] = r.pool
    if calib is not None:
        parts.update(calibration=calib.key_parts(), keep_fp32=cfg.keep_fp32, bias_correction=cfg.bias_correction,
                     refine_images=cfg.refine_images)
    return parts


def make_build(cfg: BuildConfig) -> dict:
    """Build (or reuse) the build `cfg` asks for. Returns the summary `otl engines --json` prints."""
    from engine.backends import resolve_backend

    check_config(cfg)
    t = Timings()
    backend = resolve_backend(cfg.backend)
    with t("resolve"):
        r = resolve_recipe(cfg)
    calib = None
    if cfg.precision == "int8":
        from engine.int8 import calibration_plan

        calib = calibration_plan(cfg, r.preprocess, r.cut, r.weights_id)
    parts = key_parts(cfg, r, backend, calib)
    key = sha256_json(parts)
    tidy(r.out, "otl engines is building")
    old = _reusable(cfg, r.out, key)
    if old is not None:
        return _summary(r.out, old, rebuilt=False, timings=t)
    with target_lock(r.out, "otl engines is building"):
        old = _reusable(cfg, r.out, key)  # a run that held the lock until just now may have made it
        if old is not None:
            return _summary(r.out, old, rebuilt=False, timings=t)
        with staged_folder(r.out, "otl-engine") as tmp:
            _carry_calibration_cache(r.out, tmp)
            manifest = _build_into(cfg, dataclasses.replace(r, out=tmp), backend, calib, parts, t)
    return _summary(r.out, manifest, rebuilt=True, timings=t)


def _build_into(cfg: BuildConfig, r: Recipe, backend: str, calib, parts: dict, t: Timings) -> dict:
    """Export and build into the (staged) folder r.out, manifest last. Returns the manifest."""
    from engine.backends import emulated

    module, files, extra = _export(cfg, r, calib, t)
    artifact = _build_artifact(cfg, r, backend, files, extra, t)
    manifest = {
        "kind": "otl-engine", "key": sha256_json(parts), "key_parts": parts,
        "model": cfg.model, "cut": {"name": r.cut, "features": _n_features(module, r.input_size), "pool": r.pool},
        "recipe": {"pool": r.pool, "resize": r.preprocess.resize, "input_size": r.input_size},
        "weights": {"spec": cfg.weights, "id": r.weights_id}, "seed": cfg.seed, "precision": cfg.precision,
        "backend": backend, "emulated": emulated(backend, cfg.precision),
        "artifact": str(artifact.relative_to(r.out)),
        "input": {"name": "images", "shape": [-1, 3, r.input_size, r.input_size], "dtype": "float32"},
        "output": {"name": "features", "dtype": "float32"},
        "preprocess": r.preprocess.to_dict(),
        "files": {k: file_entry(Path(v), r.out) for k, v in files.items()},
        "versions": library_versions(), "timings": t.as_dict(), **extra,
    }
    write_manifest(r.out, manifest)
    return manifest


def _reusable(cfg: BuildConfig, out: Path, key: str) -> dict | None:
    return None if cfg.force else _manifest_with_key(out, key)


def _carry_calibration_cache(old: Path, new: Path) -> None:
    """The previous build's int8 calibration cache, into the new folder: keyed by everything its
    amax values depend on, it saves a recalibration when they are unchanged."""
    from engine.int8 import CALIBRATION_CACHE

    if (old / CALIBRATION_CACHE).is_file():
        shutil.copy2(old / CALIBRATION_CACHE, new / CALIBRATION_CACHE)


def _manifest_with_key(out: Path, key: str) -> dict | None:
    """The build's manifest when it is complete and its key is `key`, else None."""
    if not (out / "manifest.json").exists():
        return None
    try:
        old = read_manifest(out, "build")
    except ArtifactError:
        return None  # an unreadable or half-written folder is rebuilt
    return old if old.get("key") == key else None


def _export(cfg: BuildConfig, r: Recipe, calib, t: Timings) -> tuple[object, dict, dict]:
    """The cut module, the ONNX files of the precision (fp32 always) and extra manifest entries."""
    from engine import backbones
    from engine.export import convert_fp16, export_onnx

    with t("load_backbone"):
        module, _ = backbones.build_cut(cfg.model, r.cut, cfg.weights, cfg.seed, pool=r.pool, input_size=r.input_size)
    files: dict[str, Path] = {}
    with t("export_onnx"):
        files["onnx_fp32"] = export_onnx(module, r.out / "model.fp32.onnx", r.input_size, verbose=cfg.verbose,
                                         progress=cfg.progress)
    extra: dict = {}
    if cfg.precision == "fp16":
        with t("convert_fp16"):
            files["onnx_fp16"] = convert_fp16(files["onnx_fp32"], r.out / "model.fp16.onnx")
    elif cfg.precision == "int8":
        from engine.int8 import build_int8

        with t("calibrate"):
            int8_files, extra["calibration"] = build_int8(module, files["onnx_fp32"], r.out, calib, cfg)
        files.update(int8_files)
    return module, files, extra


def _build_artifact(cfg: BuildConfig, r: Recipe, backend: str, files: dict, extra: dict, t: Timings) -> Path:
    """The file the backend runs (adds its new files and manifest entries to `files` and `extra`)."""
    from engine.backends import build_artifact, onnx_file_key

    with t(f"build_{backend}"):
        artifact, new_files, new_extra = build_artifact(backend, files[onnx_file_key(cfg.precision, backend)], r.out,
                                                        cfg.precision, r.input_size, cfg.batch_size, cfg.max_batch)
    files.update(new_files)
    extra.update(new_extra)
    return artifact


def _n_features(module, size: int) -> int:
    import torch

    with torch.no_grad():
        return int(module(torch.zeros(1, 3, size, size)).shape[1])


def artifact_of(manifest: dict) -> str:
    """The manifest's artifact path (relative); builds made before the rename call it "engine"."""
    return manifest.get("artifact") or manifest["engine"]


def _summary(out: Path, manifest: dict, rebuilt: bool, timings: Timings) -> dict:
    from engine.backends import onnx_file_key

    return {
        "build_dir": str(out),
        "onnx": str(out / manifest["files"][onnx_file_key(manifest["precision"], manifest["backend"])]["path"]),
        "artifact": str(out / artifact_of(manifest)),
        "precision": manifest["precision"], "backend": manifest["backend"],
        "emulated": manifest["emulated"], "model": manifest["model"], "cut": manifest["cut"]["name"],
        "features": manifest["cut"]["features"], "rebuilt": rebuilt,
        "recipe": manifest.get("recipe", {"pool": "none", "resize": "crop"}),
        "calibration": manifest.get("calibration", {}).get("summary"),
        "timings": timings.as_dict(),
    }
