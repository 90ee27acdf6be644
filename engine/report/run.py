"""`otl report`: every variant measured, the sweeps, int8 sensitivity and the backprop baseline, then
report.json / report.md / report.html and the plots, written atomically into cfg.out.

    from engine.report import ReportConfig, make_report
    rep = make_report(ReportConfig(out="reports/clothing", model="mobilenet_v2", cuts=("features.18",),
                                   data="data/clothing"))
    print(rep["headline"], rep["files"])
"""
from __future__ import annotations

import datetime
import json
import time
from pathlib import Path

from engine.report.config import ReportConfig, check_report
from engine.report.headline import headline
from engine.report.schema import REPORT_KIND, REPORT_VERSION, UNITS
from engine.report.variants import component_rows, failure, recipe_rows, sweep_failed, variant_row
from kernels.progress import progress_bar


class _Context:
    """What every step shares: the config, the data's splits, test images, fp32 references."""

    def __init__(self, cfg: ReportConfig):
        from engine.train import DEFAULT_ENCODE

        self.cfg, self.root = cfg, Path(cfg.out)
        self.encoder = cfg.encoder or DEFAULT_ENCODE
        self._splits, self._images, self._backbones, self.prepared = {}, {}, {}, {}
        self.preprocess = _preprocess(cfg)  # resolved once: it builds the model on the meta device

    def splits(self, preprocess):
        """train/ and test/ only: a validation/ folder is not used, so that both methods learn from
        exactly the same rows (the gradient-free alpha comes from leave-one-out on them)."""
        from engine.data import load_splits

        key = str(preprocess.to_dict())
        if key not in self._splits:
            cfg = self.cfg
            sp = load_splits(cfg.data, preprocess, test_fraction=cfg.test_fraction, seed=cfg.split_seed)
            if sp.test is None or len(sp.test) == 0:
                raise ValueError(f"{cfg.data}: no test split; the report scores every variant on test images")
            self._splits[key] = sp
        return self._splits[key]

    def images(self, preprocess):
        from engine.report.measure import first_images

        key = str(preprocess.to_dict())
        if key not in self._images:
            self._images[key] = first_images(self.splits(preprocess).test, max(self.cfg.throughput_batch, 32))
        return self._images[key]

    def backbone(self, cut) -> dict:
        from engine.report.measure import backbone_size

        if cut not in self._backbones:
            size = self.preprocess.crop_size
            self._backbones[cut] = backbone_size(self.cfg.model, cut, self.cfg.weights, self.cfg.seed, size)
        return self._backbones[cut]

    def reference(self, cut, backend):
        return self.prepared.get((cut, "fp32", backend))


def make_report(cfg: ReportConfig) -> dict:
    """Run the whole report and write it; returns the report (as report.json holds it)."""
    check_report(cfg)
    t0 = time.perf_counter()
    ctx = _Context(cfg)
    ctx.splits(ctx.preprocess)  # a data problem stops the report here, before any build
    rep = {"kind": REPORT_KIND, "version": REPORT_VERSION,
           "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "command": cfg.command or f"make_report({cfg!r})", "config": cfg.to_dict(), "environment": environment(), "units": UNITS}
    plan = [(c, p, b) for c in cfg.cuts for b in cfg.backends for p in _fp32_first(cfg.precisions)]
    n_steps = len(plan) + 2 * len(cfg.cuts) + len(cfg.baseline_at) * bool(cfg.baseline_epochs)
    with progress_bar(cfg.progress, total=n_steps, desc="report", unit="step") as bar:
        rep["variants"], accs = _variants(ctx, plan, bar)
        rep["components"], rep["recipes"] = _sweeps(ctx, accs, bar)
        rep["sensitivity"] = [_sensitivity(ctx, r) for r in rep["variants"] if r["precision"] == "int8"]
        rep["baseline"] = _baselines(ctx, bar)
    rep["data"] = _data(ctx)
    rep["headline"] = headline(rep)
    rep["timings_s"] = {"total": round(time.perf_counter() - t0, 3)}
    from engine.report.write import write_report

    rep["files"] = write_report(rep, Path(cfg.out))
    return rep


def _fp32_first(precisions) -> list:
    """fp32 first: the other precisions are compared with it."""
    return sorted(precisions, key=lambda p: p != "fp32")


def _variants(ctx, plan, bar) -> tuple[list, dict]:
    rows, accs = [], {}
    for cut, precision, backend in plan:
        bar.set_postfix_str(f"{cut} {precision} {backend}")
        row, p = variant_row(ctx, cut, precision, backend)
        if p is not None:
            ctx.prepared[(cut, precision, backend)] = p
            accs[(cut, precision, backend)] = row["accuracy"]
        rows.append(dict(row, accuracy=_public(row["accuracy"])))
        bar.update(1)
    return rows, accs


def _public(acc: dict | None) -> dict | None:
    keep = ("mean_pct", "se_pct", "per_seed_pct", "seeds", "n_components", "encoder", "alphas", "select")
    return None if acc is None else {k: acc[k] for k in keep}


def _sweeps(ctx, accs: dict, bar) -> tuple[list, list]:
    """K and recipe sweeps per cut, on the first backend's fp32 featurization of that cut."""
    comps, recipes = [], []
    for cut in ctx.cfg.cuts:
        found = next(((b, ctx.prepared[(cut, "fp32", b)]) for b in ctx.cfg.backends
                      if (cut, "fp32", b) in ctx.prepared), None)
        if found is None:  # the sweeps run on fp32 features: say why they are missing
            why = f"no fp32 variant of {cut} succeeded (see its row)"
            comps.append(sweep_failed(cut, why))
            recipes.append(sweep_failed(cut, why))
            bar.update(2)
            continue
        backend, p = found
        acc = accs.get((cut, "fp32", backend))
        bar.set_postfix_str(f"{cut} K sweep")
        comps += component_rows(ctx, cut, p, acc)
        bar.update(1)
        bar.set_postfix_str(f"{cut} recipes")
        recipes += recipe_rows(ctx, cut, backend, p, acc)
        bar.update(1)
    return comps, recipes


def _sensitivity(ctx, row: dict) -> dict:
    from engine.report.sensitivity import int8_sensitivity

    # every encoding's Q/DQ file is run by ONNX Runtime here (a TensorRT build's too: what TensorRT
    # makes of it can differ)
    out = {"cut": row["cut"], "backend": row["backend"], "measured_with": "onnxruntime", "status": "ok",
           "error": None, "images": None,
           "threshold": ctx.cfg.sensitivity_threshold, "tensors": None, "worst": None, "first_below": None,
           "output_sqnr_db_all": None}
    p = ctx.prepared.get((row["cut"], "int8", row["backend"]))
    if p is None or ctx.cfg.sensitivity_images == 0:
        return dict(out, status="failed" if p is None else "skipped",
                    error=row["error"] if p is None else "sensitivity_images = 0")
    try:
        fp32 = p.build.root / p.build.manifest["files"]["onnx_fp32"]["path"]
        images = ctx.images(p.build.preprocess)[:ctx.cfg.sensitivity_images]
        out.update(int8_sensitivity(p.summary["onnx"], fp32, images, ctx.cfg.sensitivity_threshold,
                                    threads=ctx.cfg.threads, progress=ctx.cfg.progress))
    except Exception as e:  # noqa: BLE001 - reported; the report goes on
        out.update(status="failed", error=failure(e))
    return out


def _baselines(ctx, bar) -> list:
    cfg, rows = ctx.cfg, []
    if not cfg.baseline_epochs:
        return rows
    for cut in cfg.baseline_at:
        bar.set_postfix_str(f"{cut} backprop")
        row = {"cut": cut, "status": "ok", "error": None, "epochs": None, "best": None, "lr": cfg.baseline_lr,
               "batch": cfg.baseline_batch, "parameters": None}
        try:
            row.update(_baseline(ctx, cut))
        except Exception as e:  # noqa: BLE001 - reported; the report goes on
            row.update(status="failed", error=failure(e))
        rows.append(row)
        bar.update(1)
    return rows


def _baseline(ctx, cut) -> dict:
    """One cut's baseline, or the recorded one when everything it depends on is unchanged."""
    from engine.backbones import weights_id
    from engine.report.backprop import run_baseline
    from kernels.io import atomic_write_json, sha256_json

    cfg, pre = ctx.cfg, ctx.preprocess
    sp = ctx.splits(pre)
    key = sha256_json({"model": cfg.model, "cut": cut, "weights": weights_id(cfg.weights, cfg.seed, cfg.model),
                       "seed": cfg.seed, "epochs": cfg.baseline_epochs, "lr": cfg.baseline_lr,
                       "batch": cfg.baseline_batch, "preprocess": pre.to_dict(),
                       "splits": sp.source.get("split_hashes")})
    path = ctx.root / "baselines" / f"{cut}-{key[:16]}.json"
    if path.exists() and not cfg.force:
        return dict(json.loads(path.read_text()), reused=True)
    res = run_baseline(cfg.model, cut, cfg.weights, sp.train, sp.test, len(sp.classes), pre.crop_size,
                       cfg.baseline_epochs, cfg.baseline_lr, cfg.baseline_batch, cfg.seed, cfg.threads, cfg.progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, res)
    return dict(res, reused=False)


def _preprocess(cfg):
    """The preprocessing every build of this report uses (the weights', at the requested size)."""
    from engine.build import BuildConfig, resolve_recipe

    return resolve_recipe(BuildConfig(model=cfg.model, weights=cfg.weights, input_size=cfg.input_size,
                                      resize=cfg.resize, out="unused")).preprocess


def _data(ctx) -> dict:
    from engine.model_file import split_record

    cfg = ctx.cfg
    sp = ctx.splits(ctx.preprocess)
    return {"source": cfg.data or "embedded digits (scikit-learn)", "classes": sp.classes, "n_train": len(sp.train),
            "n_validation_unused": len(sp.validation) if sp.validation is not None else 0, "n_test": len(sp.test),
            "split": split_record(sp.source)}


def environment() -> dict:
    import os
    import platform

    import psutil

    from engine.artifacts import library_versions

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = None
    try:
        import torch

        if torch.cuda.is_available():
            gpu = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return {"versions": library_versions("matplotlib", "psutil"), "python": platform.python_version(),
            "platform": platform.platform(), "hardware": {"cpu": cpu, "cores": os.cpu_count(),
                                                         "memory_gb": round(psutil.virtual_memory().total / 1e9, 1),
                                                         "gpu": gpu}}

