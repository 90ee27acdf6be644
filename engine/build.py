"""`otl engines`: backbone cut -> ONNX fp32 -> fp16 / int8 graph -> engine, with a manifest.

A build folder holds one backbone cut at one precision for one backend. Its manifest.json is
written last; its key hashes everything that changes the result, so an unchanged request reuses
the folder and a changed one rebuilds it (temporary files, then renames: an interrupted build is
never picked up).
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

from engine.artifacts import file_entry, library_versions, read_manifest, write_manifest, ArtifactError
from engine.timing import Timings
from kernels.io import sha256_json

PRECISIONS = ("fp32", "fp16", "int8")
BUILD_VERSION = 2  # 2: int8 bias correction and threshold refinement


class BuildError(ValueError):
    pass


@dataclass
class EngineConfig:
    model: str = "densenet169"
    cut: str | None = None  # None: the model's default cut
    weights: str = "imagenet"  # imagenet | random | PATH
    seed: int = 0
    precision: str = "fp32"
    backend: str = "auto"
    input_size: int | None = None  # None: the weights' preprocessing crop size
    pool: str | None = None  # none | avg | avgN: pooling at the cut, in the ONNX graph; None: avg2 (avg on maps < 2x2)
    resize: str = "crop"  # crop (torchvision's weights transforms) | squash (the reference's Resize((s, s)))
    out: str | None = None  # None: builds/<model>-<cut>-<weights>-<precision>
    data: str | None = None  # calibration images for int8 (None: embedded digits)
    calibration_images: int = 512
    calibration_method: str = "entropy"
    keep_fp32: int = 3  # int8: the first N quantizable activations (graph order) stay fp32
    bias_correction: bool = True  # int8: biases absorb the mean error of the int8 weights
    refine_images: int = 0  # int8: > 0 picks each threshold by output error on this many images
    batch_size: int = 32
    threads: int | None = None
    force: bool = False
    verbose: bool = False
    max_batch: int = 256
    extra: dict = field(default_factory=dict)


def check_config(cfg: EngineConfig) -> None:
    from engine.backbones import model_info
    from engine.runners import BACKENDS

    from engine.backbones import pool_grid
    from engine.data import RESIZE_MODES

    model_info(cfg.model)
    if cfg.pool is not None:
        pool_grid(cfg.pool)
    if cfg.resize not in RESIZE_MODES:
        raise BuildError(f"unknown resize {cfg.resize!r}; expected one of {', '.join(RESIZE_MODES)} "
                         "(crop: torchvision's resize + center crop; squash: the reference's Resize((s, s)))")
    if cfg.precision not in PRECISIONS:
        raise BuildError(f"unknown precision {cfg.precision!r}; expected one of {', '.join(PRECISIONS)}")
    if cfg.backend not in BACKENDS:
        raise BuildError(f"unknown backend {cfg.backend!r}; expected one of {', '.join(BACKENDS)}")
    if cfg.backend == "torch":
        raise BuildError("the torch backend is the reference and needs no engine; build for onnxruntime or tensorrt")


def default_out(cfg: EngineConfig, cut_name: str, pool: str) -> Path:
    """builds/<model>-<cut>[-fullmap|-avgN][-squash]-<weights>-<precision>: the recipe's non-default parts."""
    from engine.backbones import DEFAULT_POOL

    w = cfg.weights if cfg.weights in ("imagenet", "random") else Path(cfg.weights).stem
    recipe = "" if pool in (DEFAULT_POOL, "avg") and cfg.pool is None else f"-{'fullmap' if pool == 'none' else pool}"
    recipe += "-squash" if cfg.resize == "squash" else ""
    return Path("builds") / f"{cfg.model}-{cut_name}{recipe}-{w}-{cfg.precision}"


def build_engine(cfg: EngineConfig) -> dict:
    """Build (or reuse) the engine `cfg` asks for. Returns the summary `otl engines --json` prints."""
    from engine import backbones
    from engine.runners import resolve_backend

    check_config(cfg)
    t = Timings()
    backend = resolve_backend(cfg.backend)
    with t("resolve"):
        cut = backbones.resolve(cfg.model, cfg.cut)
        backbones.check_weights_spec(cfg.weights)
        preprocess = backbones.preprocess_for(cfg.model, cfg.weights)
        wid = backbones.weights_id(cfg.weights, cfg.seed, cfg.model)
    size = cfg.input_size or preprocess.crop_size
    if size != preprocess.crop_size:  # keep the weights' resize/crop ratio (256/224 for ImageNet)
        ratio = preprocess.resize_size / preprocess.crop_size
        preprocess = dataclasses.replace(preprocess, crop_size=size, resize_size=int(round(size * ratio)))
    if cfg.resize != "crop":
        preprocess = dataclasses.replace(preprocess, resize=cfg.resize)
    pool = cfg.pool
    if pool != "none":
        shape = backbones.cut_map_shape(cfg.model, cut.name, size)
        pool = backbones.default_pool(shape) if pool is None else pool
        backbones.check_pool(pool, cfg.model, cut.name, shape, size)
    out = Path(cfg.out) if cfg.out else default_out(cfg, cut.name, pool)
    key_parts = {
        "build_version": BUILD_VERSION, "model": cfg.model, "cut": cut.name, "weights": wid,
        "input_size": size, "precision": cfg.precision, "backend": backend,
        "preprocess": preprocess.to_dict(), "torch": library_versions()["torch"],
    }
    if pool != "none":  # left out when "none", so keys of engines built before pooling stay valid
        key_parts["pool"] = pool
    calib = None
    if cfg.precision == "int8":
        from engine.int8 import calibration_plan

        calib = calibration_plan(cfg, preprocess, cut.name, wid)
        key_parts["calibration"] = calib.key_parts()
        key_parts["keep_fp32"] = cfg.keep_fp32
        key_parts["bias_correction"] = cfg.bias_correction
        key_parts["refine_images"] = cfg.refine_images
    key = sha256_json(key_parts)
    if not cfg.force and (out / "manifest.json").exists():
        try:
            old = read_manifest(out, "engine build")
            if old.get("key") == key:
                return _summary(out, old, rebuilt=False, timings=t)
        except ArtifactError:
            pass  # an unreadable or half-written folder is rebuilt below
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.json").unlink(missing_ok=True)  # from here on the folder is "being built"

    from engine.export import convert_fp16, export_onnx

    with t("load_backbone"):
        module, _ = backbones.build_cut(cfg.model, cut.name, cfg.weights, cfg.seed, pool=pool, input_size=size)

    files: dict[str, Path] = {}
    with t("export_onnx"):
        files["onnx_fp32"] = export_onnx(module, out / "model.fp32.onnx", size, verbose=cfg.verbose)
    extra_manifest: dict = {}
    if cfg.precision == "fp16":
        with t("convert_fp16"):
            files["onnx_fp16"] = convert_fp16(files["onnx_fp32"], out / "model.fp16.onnx")
        onnx_for = {"onnxruntime": files["onnx_fp16"], "tensorrt": files["onnx_fp16"]}
    elif cfg.precision == "int8":
        from engine.int8 import build_int8

        with t("calibrate"):
            int8_files, extra_manifest["calibration"] = build_int8(module, files["onnx_fp32"], out, calib, cfg)
        files.update(int8_files)
        onnx_for = {"onnxruntime": files["onnx_int8_onnxruntime"], "tensorrt": files["onnx_int8_tensorrt"]}
    else:
        onnx_for = {"onnxruntime": files["onnx_fp32"], "tensorrt": files["onnx_fp32"]}

    engine_file = onnx_for[backend]
    if backend == "tensorrt":
        from engine.runners.tensorrt import build_plan, device_info

        with t("build_tensorrt"):
            engine_file = build_plan(onnx_for["tensorrt"], out / f"model.{cfg.precision}.plan", size,
                                     opt_batch=cfg.batch_size, max_batch=cfg.max_batch)
        files["plan"] = engine_file
        extra_manifest["device"] = device_info()
    emulated = cfg.precision == "fp16" and backend == "onnxruntime" and _cpu_only()
    manifest = {
        "kind": "otl-engine", "key": key, "key_parts": key_parts,
        "model": cfg.model, "cut": {"name": cut.name, "features": None, "pool": pool},
        "recipe": {"pool": pool, "resize": preprocess.resize}, "weights": {"spec": cfg.weights, "id": wid},
        "seed": cfg.seed, "precision": cfg.precision, "backend": backend, "emulated": emulated,
        "engine": str(engine_file.relative_to(out)),
        "input": {"name": "images", "shape": [-1, 3, size, size], "dtype": "float32"},
        "output": {"name": "features", "dtype": "float32"},
        "preprocess": preprocess.to_dict(),
        "files": {k: file_entry(Path(v), out) for k, v in files.items()},
        "versions": library_versions(), "timings": t.as_dict(), **extra_manifest,
    }
    manifest["cut"]["features"] = _n_features(module, size)
    write_manifest(out, manifest)
    return _summary(out, manifest, rebuilt=True, timings=t)


def _n_features(module, size: int) -> int:
    import torch

    with torch.no_grad():
        return int(module(torch.zeros(1, 3, size, size)).shape[1])


def _cpu_only() -> bool:
    try:
        import onnxruntime as ort

        return "CUDAExecutionProvider" not in ort.get_available_providers()
    except ImportError:
        return True


def _summary(out: Path, manifest: dict, rebuilt: bool, timings: Timings) -> dict:
    return {
        "build_dir": str(out),
        "onnx": str(out / manifest["files"][_main_onnx(manifest)]["path"]),
        "engine": str(out / manifest["engine"]),
        "precision": manifest["precision"], "backend": manifest["backend"],
        "emulated": manifest["emulated"], "model": manifest["model"], "cut": manifest["cut"]["name"],
        "features": manifest["cut"]["features"], "rebuilt": rebuilt,
        "recipe": manifest.get("recipe", {"pool": "none", "resize": "crop"}),
        "calibration": manifest.get("calibration", {}).get("summary"),
        "timings": timings.as_dict(),
    }


def _main_onnx(manifest: dict) -> str:
    p = manifest["precision"]
    if p == "int8":
        return "onnx_int8_tensorrt" if manifest["backend"] == "tensorrt" else "onnx_int8_onnxruntime"
    return f"onnx_{p}"


def config_dict(cfg: EngineConfig) -> dict:
    return asdict(cfg)
