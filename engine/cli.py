"""`otl`: a thin layer over the Python API. Each subcommand parses into a config and calls one function.

Every command prints a short human summary; with --json it prints exactly one JSON object on
stdout (progress and warnings go to stderr).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

EMULATION_NOTE = ("fp16 on ONNX Runtime CPU is an accuracy emulation: x86 has no fp16 kernels, "
                  "ONNX Runtime wraps casts around each node, so it runs slower than fp32")


# ----------------------------------------------------------------------------- argument groups


def _engine_args(p: argparse.ArgumentParser, precision_default="fp32") -> None:
    from engine.backbones import DEFAULT_POOL, MODELS, POOL_HELP
    from engine.build import PRECISIONS
    from engine.runners import BACKENDS

    g = p.add_argument_group("engine")
    g.add_argument("--model", default="densenet169", help=f"backbone: {', '.join(MODELS)} (default densenet169)")
    g.add_argument("--cut", default=None, help="cut name (see `otl cuts MODEL`); default: the model's default cut")
    g.add_argument("--weights", default="imagenet", help="imagenet | random | PATH to a state_dict")
    g.add_argument("--precision", default=precision_default, choices=None, help=f"{' | '.join(PRECISIONS)}")
    g.add_argument("--backend", default="auto", help=f"{' | '.join(BACKENDS)} (auto: TensorRT if usable, else ONNX Runtime)")
    g.add_argument("--input-size", type=int, default=None, help="square input size (default: the weights' crop size)")
    g.add_argument("--pool", default=None, help=f"pooling at the cut, inside the engine: {POOL_HELP}; default "
                                                 f"{DEFAULT_POOL} (avg on maps smaller than 2x2; the reference: none)")
    g.add_argument("--resize", default="crop", choices=("crop", "squash"),
                   help="crop: shorter side + center crop (torchvision's weights transforms); "
                        "squash: the whole image resized to a square (the reference's); default crop")
    g.add_argument("--threads", type=int, default=None, help="intra-op threads of the runner")
    g.add_argument("--force", action="store_true", help="rebuild even when the manifest key is unchanged")
    g.add_argument("--calibration-images", type=int, default=512, help="int8: images used for calibration")
    g.add_argument("--calibration-method", default="entropy", help="int8: entropy | max | percentile")
    g.add_argument("--keep-fp32", type=int, default=3,
                   help="int8: leave the first N quantizable activations in fp32, the most sensitive layers (default 3; 0: all int8)")
    g.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="int8: do not fold the mean error of the int8 weights into the biases")
    g.add_argument("--refine-images", type=int, default=0,
                   help="int8: choose each tensor's threshold among the calibrator's candidates by the "
                        "feature error on N calibration images (slower build, more accurate engine; 0: off)")


def _data_args(p: argparse.ArgumentParser, data_required=False) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, required=data_required,
                   help="image folder: DIR/{train,validation,test}/<class>/* or DIR/<class>/*; default: embedded digits")
    g.add_argument("--test-fraction", type=float, default=0.2, help="held-out fraction for DIR/<class>/* layouts")
    g.add_argument("--validation-fraction", type=float, default=0.0,
                   help="validation fraction of train when DIR has no validation/ folder")
    g.add_argument("--strict", action="store_true", help="fail on unreadable images instead of skipping them")
    g.add_argument("--batch-size", type=int, default=32)
    g.add_argument("--workers", type=int, default=None, help="image decoding workers")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seed", type=int, default=0, help="seed for random weights, splits and projections")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _engine_config(a: argparse.Namespace, out=None):
    from engine.build import EngineConfig

    return EngineConfig(model=a.model, cut=a.cut, weights=a.weights, seed=a.seed, precision=a.precision,
                        backend=a.backend, input_size=a.input_size, pool=a.pool, resize=a.resize, out=out, data=getattr(a, "data", None),
                        calibration_images=a.calibration_images, calibration_method=a.calibration_method,
                        keep_fp32=a.keep_fp32, bias_correction=a.bias_correction, refine_images=a.refine_images,
                        batch_size=getattr(a, "batch_size", 32), threads=a.threads, force=a.force)


# ----------------------------------------------------------------------------- commands


def cmd_cuts(a) -> dict:
    from engine.backbones import list_cuts

    rows = list_cuts(a.model, a.input_size or 224, a.pool)
    if not a.json:
        print(f"{a.model}: {len(rows)} cuts at {a.input_size or 224}x{a.input_size or 224}, "
              f"pool {a.pool or 'default (avg2, avg on maps < 2x2)'} (* = default cut)")
        for r in rows:
            shape = "x".join(map(str, r["shape"]))
            n = f"{r['features']:>10,} features" if r["features"] is not None else f"  (map too small for {a.pool})"
            print(f"  {'*' if r['default'] else ' '} {r['cut']:<20} {shape:>14} {r['pool']:>5} {n}")
    return {"model": a.model, "pool": a.pool, "cuts": rows}


def cmd_engines(a) -> dict:
    from engine.build import build_engine

    res = build_engine(_engine_config(a, out=a.out))
    if res["emulated"]:
        res["note"] = EMULATION_NOTE
    if not a.json:
        state = "built" if res["rebuilt"] else "up to date (manifest key unchanged)"
        r = res["recipe"]
        print(f"engine {res['model']} cut {res['cut']} pool {r['pool']} resize {r['resize']} "
              f"({res['features']:,} features), {res['precision']} on "
              f"{res['backend']}: {state}\n  onnx:   {res['onnx']}\n  engine: {res['engine']}")
        if res.get("calibration"):
            c = res["calibration"]
            print(f"  int8: {c.get('tensors')} tensors quantized, calibrated on {c.get('images')} images "
                  f"({c.get('method')}) in {c.get('seconds', 0):.1f} s")
            if c.get("kept_fp32"):
                print(f"  int8: kept in fp32 (--keep-fp32): {', '.join(c['kept_fp32'])}")
            if c.get("refine"):
                r = c["refine"]
                print(f"  int8: refined {len(r['changed'])} thresholds on {r['images']} images in {r['seconds']:.1f} s: "
                      f"feature error {r['error_before']:.4f} -> {r['error_after']:.4f}")
        if res["emulated"]:
            print(f"  note: {EMULATION_NOTE}")
        print("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in res["timings"].items()))
    return res


def _engine_for(a):
    """An Engine from --engine, or built (or reused) from the engine arguments."""
    from engine.runtime import Engine

    if a.engine:
        return Engine(a.engine, backend=None if a.backend == "auto" else a.backend, threads=a.threads), None
    from engine.build import build_engine

    res = build_engine(_engine_config(a))
    return Engine(res["build_dir"], threads=a.threads), res


def cmd_featurize(a) -> dict:
    from engine.data import load_splits
    from engine.featurize import Featurizer
    from engine.store import write_store
    from engine.timing import Timings

    t = Timings()
    with t("engine"):
        engine, _ = _engine_for(a)
    with t("load_data"):
        splits = load_splits(a.data, engine.preprocess, test_fraction=a.test_fraction,
                             validation_fraction=a.validation_fraction, seed=a.seed, strict=a.strict)
    parts = {"train": splits.train, "validation": splits.validation, "test": splits.test}
    with t("featurize"), Featurizer(engine, a.batch_size, a.workers, progress=False if a.quiet else None) as f:
        manifest = write_store(a.out, f, parts, fmt=a.format, encoder=a.encode, classes=splits.classes,
                               source=splits.source, seed=a.seed)
    rows = {k: v["rows"] for k, v in manifest["splits"].items()}
    n = sum(rows.values())
    res = {"store": a.out, "engine": engine.describe(), "format": a.format, "rows": rows,
           "features": manifest["n_features"], "images_per_second": round(n / max(t.seconds["featurize"], 1e-9), 2),
           "timings": t.as_dict()}
    if not a.json:
        print(f"feature store {a.out}: {rows} rows x {manifest['n_features']:,} features ({a.format}), "
              f"{res['images_per_second']} images/s on {engine.backend} {engine.precision}")
        if engine.manifest.get("emulated"):
            print(f"  note: {EMULATION_NOTE}")
    return res


def cmd_cache(a) -> dict:
    from kernels.matrix_cache import MatrixCache

    c = MatrixCache()
    entries = c.entries()
    res = {"path": str(c.root) if c.root else None, "entries": len(entries), "bytes": sum(e[1] for e in entries),
           "limit_bytes": c.limit}
    if a.clear:
        res["removed"], res["removed_bytes"] = c.clear()
    if not a.json:
        if c.root is None:
            print("the OPU matrix cache is off (OTL_CACHE_DIR=off)")
        else:
            print(f"OPU matrix cache {c.root}: {res['entries']} matrices, {res['bytes'] / 2**20:.1f} MiB "
                  f"(limit {c.limit / 2**30:.1f} GiB, OTL_CACHE_MAX_BYTES)")
            if a.clear:
                print(f"  removed {res['removed']} matrices ({res['removed_bytes'] / 2**20:.1f} MiB)")
    return res


# ----------------------------------------------------------------------------- entry point


def build_parser() -> argparse.ArgumentParser:
    from engine.train import DEFAULT_ENCODE

    p = argparse.ArgumentParser(prog="otl", description="Optical transfer learning: engines, features, gradient-free training.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("cuts", help="list the valid cuts of a model with output shapes")
    c.add_argument("model")
    c.add_argument("--input-size", type=int, default=None)
    c.add_argument("--pool", default=None, help="feature counts after this pooling: none | avg | avgN "
                                                "(default: what `otl engines` uses, avg2 or avg on small maps)")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=cmd_cuts)

    e = sub.add_parser("engines", help="export, convert/calibrate and build an engine")
    _engine_args(e)
    _data_args(e)
    _common(e)
    e.add_argument("--out", default=None, help="build folder (default builds/<model>-<cut>-<weights>-<precision>)")
    e.set_defaults(func=cmd_engines)

    f = sub.add_parser("featurize", help="featurize a dataset into a feature store")
    _engine_args(f)
    _data_args(f)
    _common(f)
    f.add_argument("--engine", default=None, help="an engine build folder (else built from the engine arguments)")
    f.add_argument("--out", required=True, help="feature store folder to write")
    f.add_argument("--format", default="bits", help="bits (packed, after --encode) | float16 | float32")
    f.add_argument("--encode", default=DEFAULT_ENCODE,
                   help="bits format: sign | threshold:T | threshold:median | thresholds:Q (fitted encoders learn "
                        f"their thresholds on train; default {DEFAULT_ENCODE}; the reference: sign)")
    f.set_defaults(func=cmd_featurize)

    k = sub.add_parser("cache", help="the on-disk cache of OPU random matrices: size, location, --clear")
    k.add_argument("--clear", action="store_true", help="remove every cached matrix")
    k.add_argument("--json", action="store_true")
    k.set_defaults(func=cmd_cache)

    from engine.train_cli import register

    register(sub, _engine_args, _data_args, _common)  # fit, evaluate, predict
    return p


def known_errors() -> tuple:
    from engine.artifacts import ArtifactError
    from engine.backbones import BackboneError
    from engine.build import BuildError
    from engine.runners import RunnerError

    errs = [ArtifactError, BackboneError, BuildError, RunnerError, ValueError, FileNotFoundError, ImportError,
            MemoryError]
    return tuple(errs)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "quiet", False):
        warnings.simplefilter("ignore")
    t0 = time.perf_counter()
    try:
        res = args.func(args)
    except known_errors() as e:
        msg = f"{type(e).__name__}: {e}"
        if getattr(args, "json", False):
            print(json.dumps({"error": msg, "command": args.command}))
        print(f"otl {args.command}: error: {msg}", file=sys.stderr)
        return 2
    if args.json:
        res = dict(res)
        res.setdefault("timings", {})["total"] = round(time.perf_counter() - t0, 4)
        print(json.dumps(res, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
