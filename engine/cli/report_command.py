"""`otl report`: parse -> ReportConfig -> make_report -> where the report is, and its headline."""
from __future__ import annotations

import argparse
import shlex
import sys

from engine.checks import MAX_SEED, MIN_INPUT_SIZE
from engine.cli.args import EMULATION_NOTE, fraction, integer, progress


def _list(text: str, cast=str) -> tuple:
    try:
        return tuple(cast(v.strip()) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{text!r}: expected comma-separated values, e.g. 1000,2000,4000") from None


def _cuts(text: str | None, what: str = "--cuts") -> tuple:
    if text is None:
        return (None,)
    cuts = tuple(c if c != "default" else None for c in _list(text))
    if not cuts:
        raise ValueError(f"{what} {text!r}: expected comma-separated cut names (`otl cuts MODEL`)")
    return cuts


def add_report(sub) -> None:
    from engine.backbones import MODELS
    from engine.report.config import DEFAULT_ENCODERS, ReportConfig

    d = ReportConfig()
    r = sub.add_parser("report", help="compare fp32 / fp16 / int8 and gradient-free training against backprop")
    r.add_argument("--model", default=d.model, help=f"backbone: {', '.join(MODELS)} (default {d.model})")
    r.add_argument("--cuts", default=None, help="comma-separated cut names (`otl cuts MODEL`); default: the model's "
                                                "default cut")
    r.add_argument("--weights", default=d.weights, help="imagenet (default) | random | PATH to a state_dict")
    r.add_argument("--data", default=None, help="DIR/{train,test}/<class>/* or DIR/<class>/*; default: embedded "
                                                "digits (a validation/ folder is not used)")
    r.add_argument("--precisions", default=",".join(d.precisions), help="default fp32,fp16,int8")
    r.add_argument("--backends", default="auto", help="comma-separated: auto (default) | onnxruntime | tensorrt | "
                                                      "torch; a backend that cannot run is reported as failed")
    r.add_argument("--n-components", default=",".join(map(str, d.n_components)),
                   help="K sweep, comma-separated (default 1000,2000,4000); the rows use the largest")
    r.add_argument("--row-components", type=integer(1), default=None, help="K of the per-variant accuracy "
                                                                    "(default: the largest of --n-components)")
    r.add_argument("--seeds", type=integer(1), default=d.seeds,
        help=f"projection seeds per accuracy (default {d.seeds})")
    r.add_argument("--encode", default=None, help="the rows' encoder (default threshold:median)")
    r.add_argument("--pool", default=None, help="the rows' pooling at the cut (default: avg2, avg on maps < 2x2)")
    r.add_argument("--sweep-encoders", default=",".join(DEFAULT_ENCODERS), help="default " + ",".join(DEFAULT_ENCODERS))
    r.add_argument("--sweep-pools", default=",".join(d.sweep_pools), help="more poolings to compare (default avg; "
                                                                          "'' for none)")
    r.add_argument("--baseline-epochs", type=integer(0), default=d.baseline_epochs,
                   help=f"backprop baseline epochs (default {d.baseline_epochs}; 0: no baseline)")
    r.add_argument("--baseline-cuts", default=None, help="cuts the baseline trains at (default: every cut)")
    r.add_argument("--baseline-lr", type=float, default=d.baseline_lr,
        help=f"Adam learning rate (default {d.baseline_lr})")
    r.add_argument("--baseline-batch", type=integer(1), default=d.baseline_batch, help=f"default {d.baseline_batch}")
    r.add_argument("--no-linear-probe", action="store_true",
        help="leave ridge on the pooled floats out of the sweep (default off)")
    r.add_argument("--resize", default="crop", choices=("crop", "squash"), help="default crop")
    r.add_argument("--input-size", type=integer(MIN_INPUT_SIZE), default=None,
        help="square input size (default: the weights' crop)")
    r.add_argument("--calibration-images", type=integer(1), default=d.calibration_images, help="int8 (default 512)")
    r.add_argument("--sensitivity-images", type=integer(0), default=d.sensitivity_images,
                   help=f"int8 sensitivity: test images per single-tensor run (default {d.sensitivity_images}; 0: off)")
    r.add_argument("--sensitivity-threshold", type=float, default=d.sensitivity_threshold,
                   help=f"int8: the cosine with fp32 below which a tensor is 'first below' (default {d.sensitivity_threshold})")
    r.add_argument("--throughput-batch", type=integer(1), default=d.throughput_batch,
                   help=f"batch of the images/s measurement and of featurization (default {d.throughput_batch})")
    r.add_argument("--latency-runs", type=integer(1), default=d.latency_runs,
        help=f"batch-1 runs timed (default {d.latency_runs})")
    r.add_argument("--warmup-runs", type=integer(0), default=d.warmup_runs,
        help=f"untimed batch-1 runs first (default {d.warmup_runs})")
    r.add_argument("--test-fraction", type=fraction, default=d.test_fraction,
                   help="held-out fraction for DIR/<class>/* and the digits (default 0.2)")
    r.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
        help="seed of random weights and of the split (default 0)")
    r.add_argument("--threads", type=integer(1), default=None, help="intra-op threads (default: all cores)")
    r.add_argument("--workers", type=integer(0), default=None, help="image decoding workers (default: min(4, cores))")
    r.add_argument("--force", action="store_true",
        help="rebuild and re-featurize even when keys are unchanged (default off)")
    r.add_argument("--out", default=d.out, help=f"report folder (default {d.out})")
    r.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout (default off)")
    r.add_argument("--quiet", action="store_true",
        help="no progress bars or warnings, except skipped images (default off)")
    r.set_defaults(func=run_report)


def report_config(a: argparse.Namespace):
    from engine.report.config import ReportConfig

    return ReportConfig(
        out=a.out, model=a.model, cuts=_cuts(a.cuts), weights=a.weights, data=a.data,
        precisions=_list(a.precisions), backends=_list(a.backends), n_components=_list(a.n_components, int),
        row_components=a.row_components, seeds=a.seeds, encoder=a.encode, pool=a.pool,
        sweep_encoders=_list(a.sweep_encoders), sweep_pools=_list(a.sweep_pools),
        baseline_epochs=a.baseline_epochs,
        baseline_cuts=None if a.baseline_cuts is None else _cuts(a.baseline_cuts, "--baseline-cuts"),
        baseline_lr=a.baseline_lr, baseline_batch=a.baseline_batch, linear_probe=not a.no_linear_probe,
        sensitivity_threshold=a.sensitivity_threshold, throughput_batch=a.throughput_batch,
        warmup_runs=a.warmup_runs,
        resize=a.resize, input_size=a.input_size, calibration_images=a.calibration_images,
        sensitivity_images=a.sensitivity_images, latency_runs=a.latency_runs, test_fraction=a.test_fraction,
        split_seed=a.seed, seed=a.seed, threads=a.threads, workers=a.workers, force=a.force,
        progress=progress(a), command="otl " + shlex.join(sys.argv[1:]) if sys.argv[1:] else "otl report")


def run_report(a: argparse.Namespace) -> dict:
    from engine.report import make_report

    rep = make_report(report_config(a))
    res = {"report": str(a.out), "files": sorted(rep["files"]), "headline": rep["headline"],
           "variants": [_brief(v) for v in rep["variants"]], "timings": dict(rep["timings_s"])}
    if not a.json:
        _print(res)
    return res


def _brief(v: dict) -> dict:
    acc, feat = v.get("accuracy") or {}, v.get("featurize") or {}
    return {"id": v["id"], "status": v["status"], "error": v["error"], "emulated": v["emulated"],
            "accuracy_pct": acc.get("mean_pct"), "se_pct": acc.get("se_pct"),
            "images_per_s": feat.get("images_per_s")}


def _print(res: dict) -> None:
    for v in res["variants"]:
        if v["status"] != "ok":
            print(f"  {v['id']:<40} failed: {v['error']}")
            continue
        se = "" if v["se_pct"] is None else f" +- {v['se_pct']:.2f}"
        tag = " (emulated)" if v["emulated"] else ""
        print(f"  {v['id'] + tag:<40} {v['accuracy_pct']:6.2f}{se} %   {v['images_per_s']:8.1f} images/s")
    if any(v["emulated"] for v in res["variants"]):
        print(f"  (emulated: {EMULATION_NOTE})")
    print(f"report: {res['report']}/report.html (also report.md, report.json, plots/)")
