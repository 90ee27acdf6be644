"""`otl cuts`, `otl engines`, `otl featurize`, `otl cache`: parse -> config -> one API call -> print."""
from __future__ import annotations

import argparse

from engine.checks import MIN_INPUT_SIZE
from engine.cli.args import (EMULATION_NOTE, build_args, build_config, build_folder_arg, data_args, integer,
                             output_args, progress, runner_args)


def add_cuts(sub) -> None:
    c = sub.add_parser("cuts", help="list the valid cuts of a model with output shapes")
    c.add_argument("model", help="backbone (see `otl engines --help` for the list)")
    c.add_argument("--input-size", type=integer(MIN_INPUT_SIZE), default=None,
                   help="square input size (default 288, what `otl engines` uses for 224-crop weights)")
    c.add_argument("--pool", default=None, help="feature counts after this pooling: none | avg | avgN "
                                                "(default: what `otl engines` uses, avg3, or avg2 / avg on small maps)")
    c.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout (default off)")
    c.set_defaults(func=run_cuts)


def run_cuts(a) -> dict:
    from engine.backbones import default_input_size, list_cuts

    size = a.input_size or default_input_size(224)  # every registered model's weights crop 224
    rows = list_cuts(a.model, size, a.pool)
    if not a.json:
        print(f"{a.model}: {len(rows)} cuts at {size}x{size}, "
              f"pool {a.pool or 'default (avg3; avg2 / avg on maps < 3x3)'} (* = default cut)")
        for r in rows:
            shape = "x".join(map(str, r["shape"]))
            n = f"{r['features']:>10,} features" if r["features"] is not None else f"  (map too small for {a.pool})"
            print(f"  {'*' if r['default'] else ' '} {r['cut']:<20} {shape:>14} {r['pool']:>5} {n}")
    return {"model": a.model, "pool": a.pool, "cuts": rows}


def add_engines(sub) -> None:
    e = sub.add_parser("engines", help="export, convert or calibrate, and build: one build folder per recipe")
    build_args(e)
    runner_args(e)
    data_args(e)
    output_args(e)
    e.add_argument("--out", default=None,
                   help="build folder (default builds/<model>-<cut>[-fullmap|-avgN][-squash]-<weights>-<precision>)")
    e.set_defaults(func=run_engines)


def run_engines(a) -> dict:
    from engine.build import make_build

    res = make_build(build_config(a, out=a.out))
    if res["emulated"]:
        res["note"] = EMULATION_NOTE
    if not a.json:
        _print_build(res)
    return res


def _print_build(res: dict) -> None:
    state = "built" if res["rebuilt"] else "up to date (manifest key unchanged)"
    r = res["recipe"]
    print(f"build {res['model']} cut {res['cut']} pool {r['pool']} resize {r['resize']} "
          f"({res['features']:,} features), {res['precision']} on {res['backend']}: {state}\n"
          f"  folder:   {res['build_dir']}\n  onnx:     {res['onnx']}\n  artifact: {res['artifact']}")
    c = res.get("calibration")
    if c:
        print(f"  int8: {c.get('tensors')} tensors quantized, calibrated on {c.get('images')} images "
              f"({c.get('method')}) in {c.get('seconds', 0):.1f} s")
        if c.get("kept_fp32"):
            print(f"  int8: kept in fp32 (--keep-fp32): {', '.join(c['kept_fp32'])}")
        if c.get("refine"):
            rf = c["refine"]
            print(f"  int8: refined {len(rf['changed'])} clip values on {rf['images']} images in {rf['seconds']:.1f} s: "
                  f"feature error {rf['error_before']:.4f} -> {rf['error_after']:.4f}")
    if res["emulated"]:
        print(f"  note: {EMULATION_NOTE}")
    print("  timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in res["timings"].items()))


def add_featurize(sub) -> None:
    from kernels.encode import DEFAULT_SPEC

    f = sub.add_parser("featurize", help="featurize a dataset into a feature store")
    build_folder_arg(f, "a build folder (`otl engines --out`); default: built (or reused) from the build arguments")
    build_args(f, runs_builds=True)
    runner_args(f)
    data_args(f)
    output_args(f)
    f.add_argument("--out", required=True, help="feature store folder to write")
    f.add_argument("--format", default="float16",
                   help="float16 (default: what `otl fit` trains on by default, and any encoder can read) | "
                        "bits (packed, after --encode: 16x smaller, for the optical projection only) | float32")
    f.add_argument("--encode", default=DEFAULT_SPEC,
                   help="bits format: sign | threshold:T | threshold:median | thresholds:Q (fitted encoders learn "
                        f"their thresholds on train; default {DEFAULT_SPEC}; the reference: sign)")
    f.set_defaults(func=run_featurize)


def run_featurize(a) -> dict:
    from engine.featurize import FeaturizeConfig, featurize

    cfg = FeaturizeConfig(out=a.out, build=a.build, build_config=None if a.build else build_config(a),
                          backend=a.backend, data=a.data, format=a.format, encode=a.encode,
                          test_fraction=a.test_fraction, validation_fraction=a.validation_fraction, seed=a.seed,
                          strict=a.strict, batch_size=a.batch_size, workers=a.workers, threads=a.threads,
                          progress=progress(a))
    res = featurize(cfg)
    if not a.json:
        b = res["build"]
        print(f"feature store {res['store']}: {res['rows']} rows x {res['features']:,} features ({res['format']}), "
              f"{res['images_per_second']} images/s on {b['backend']} {b['precision']}")
        if res["emulated"]:
            print(f"  note: {EMULATION_NOTE}")
    return res


def add_cache(sub) -> None:
    k = sub.add_parser("cache", help="the on-disk cache of OPU random matrices: size, location, --clear")
    k.add_argument("--clear", action="store_true", help="remove every cached matrix (default off)")
    k.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout (default off)")
    k.set_defaults(func=run_cache)


def run_cache(a: argparse.Namespace) -> dict:
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
