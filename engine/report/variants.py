"""The report's rows: one variant (cut x precision x backend) measured end to end, and the sweeps
over K and feature recipes that reuse its float feature store.

Every row's timings_s are what this run spent (a reused build or store costs ~0 here); build_s and
training_s are what the variant costs, from the build's manifest and the store's recorded times.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.report.fits import fit_seeds
from engine.report.measure import (PeakMemory, agreement, check_features, file_mb, gpu_used_mb, speed,
                                   write_features)
from engine.timing import Timings

VARIANT_EMPTY = ("backbone", "build", "featurize", "agreement", "accuracy", "timings_s", "training_s",
                 "inference_ms_per_image")


def slug(*parts) -> str:
    return "-".join(str(p).replace("/", "_") for p in parts)


def failure(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


@dataclass
class Prepared:
    """A variant's build and its float store, ready to measure and fit."""

    summary: dict  # make_build's
    build: object  # engine.build_folder.Build
    store: object  # engine.store.FeatureStore
    featurize_s: dict  # recorded {featurize_train, featurize_test} seconds
    store_reused: bool
    speed: dict | None = None
    peak_host_mb: float | None = None
    peak_gpu_mb: float | None = None
    run_s: dict = field(default_factory=dict)  # what this run spent, per stage


def prepare(ctx, cut, precision: str, backend: str, pool: str | None, measure: bool) -> Prepared:
    """Build (or reuse) and featurize (or reuse) one variant; with `measure`, time the engine too."""
    from engine.build import BuildConfig, make_build
    from engine.build_folder import Build
    from engine.featurize import Featurizer
    from engine.store import FeatureStore

    cfg, t = ctx.cfg, Timings()
    with t("build"):
        res = make_build(BuildConfig(
            model=cfg.model, cut=cut, weights=cfg.weights, seed=cfg.seed, precision=precision, backend=backend,
            input_size=cfg.input_size, pool=pool, resize=cfg.resize, data=cfg.data,
            calibration_images=cfg.calibration_images, threads=cfg.threads, force=cfg.force,
            out=str(ctx.root / "builds" / slug(cut or "default", pool or "default", precision, backend))))
        build = Build(res["build_dir"], threads=cfg.threads)
    with t("load_data"):
        splits = ctx.splits(build.preprocess)
    store_path = ctx.root / "stores" / Path(res["build_dir"]).name
    mem, gpu0 = PeakMemory(), gpu_used_mb()
    with t("load_engine"):
        featurizer = Featurizer(build, cfg.throughput_batch, cfg.workers, cfg.progress)
    with mem.watch(), featurizer as f:
        seconds, reused = write_features(store_path, f, splits, cfg.force or res["rebuilt"])
        if not reused:
            for k, v in seconds.items():
                t.add(k, v)
        sp = None
        if measure:
            with t("latency"):
                sp = speed(f.runner, ctx.images(build.preprocess), cfg.throughput_batch, cfg.warmup_runs,
                           cfg.latency_runs)
    gpu1 = gpu_used_mb()
    with t("load"):
        store = FeatureStore(store_path, build_key=build.key)
        check_features(store, precision)
    return Prepared(res, build, store, seconds, reused, sp, mem.mb,
                    None if gpu1 is None or gpu0 is None else round(max(gpu1 - gpu0, 0.0), 1), t.seconds)


def build_numbers(p: Prepared) -> dict:
    recorded = p.build.manifest.get("timings", {})
    return {"build_s": round(sum(recorded.values()), 3), "calibration_s": recorded.get("calibrate"),
            "reused": not p.summary["rebuilt"], "onnx_mb": file_mb(p.summary["onnx"]),
            "artifact_mb": file_mb(p.summary["artifact"]), "build_dir": p.summary["build_dir"]}


def variant_row(ctx, cut, precision: str, backend: str) -> tuple[dict, Prepared | None]:
    """The variant's row (status ok or failed, never raises for the variant's own errors)."""
    cfg = ctx.cfg
    row = {"id": f"{cut}/{precision}/{backend}", "cut": cut, "precision": precision, "backend": backend,
           "emulated": None, "status": "ok", "error": None, **dict.fromkeys(VARIANT_EMPTY)}
    t0 = time.perf_counter()
    try:
        from engine.backends import emulated, resolve_backend

        row["emulated"] = emulated(resolve_backend(backend), precision)
        p = prepare(ctx, cut, precision, backend, cfg.pool, measure=True)
        t = dict(p.run_s)
        t1 = time.perf_counter()
        size = ctx.backbone(cut)
        t["backbone"] = time.perf_counter() - t1
        row.update(emulated=bool(p.summary["emulated"]), build=build_numbers(p),
                   backbone=dict(size, features=p.summary["features"]),
                   featurize=dict(p.speed, peak_host_mb=p.peak_host_mb, peak_gpu_mb=p.peak_gpu_mb,
                                  store_reused=p.store_reused, recorded_s=p.featurize_s))
        ref = ctx.reference(cut, backend)
        if precision != "fp32" and ref is not None:
            t1 = time.perf_counter()
            row["agreement"] = agreement(p.store, ref.store, f"{cut}/fp32/{backend}", ctx.encoder)
            t["compare"] = time.perf_counter() - t1
        acc = fit_seeds(p.store, ctx.encoder, cfg.k_rows, cfg.seeds)
        for k, v in acc.pop("timings_s").items():
            t[k] = t.get(k, 0.0) + v
        row["accuracy"] = acc
        row["training_s"] = round(p.featurize_s.get("featurize_train", 0.0) + acc["fit_s_median"], 3)
        row["inference_ms_per_image"] = round(1e3 / p.speed["images_per_s"]
                                              + 1e3 * acc["predict_s_median"] / acc["n_test"], 4)
        t["total"] = time.perf_counter() - t0
        row["timings_s"] = {k: round(v, 4) for k, v in t.items()}
        return row, p
    except Exception as e:  # noqa: BLE001 - a failed variant is reported; the rest of the report goes on
        row.update(status="failed", error=failure(e))
        return row, None


def sweep_row(cut, precision, pool, encoder, projection, k, fn) -> dict:
    row = {"cut": cut, "precision": precision, "pool": pool, "encoder": encoder, "projection": projection,
           "n_components": k, "mean_pct": None, "se_pct": None, "per_seed_pct": None, "fit_s": None,
           "status": "ok", "error": None}
    try:
        acc = fn()
        row.update(mean_pct=acc["mean_pct"], se_pct=acc["se_pct"], per_seed_pct=acc["per_seed_pct"],
                   fit_s=acc["fit_s_median"])
    except Exception as e:  # noqa: BLE001 - one failed point does not stop the sweep
        row.update(status="failed", error=failure(e))
    return row


def sweep_failed(cut, why: str) -> dict:
    def fail():
        raise ValueError(why)
    return sweep_row(cut, "fp32", None, None, None, None, fail)


def component_rows(ctx, cut, p: Prepared, rows_acc: dict | None) -> list[dict]:
    """Accuracy against K on one featurization (the rows' K reuses the variant's own fits)."""
    cfg, out = ctx.cfg, []
    pool = p.summary["recipe"]["pool"]
    for k in cfg.n_components:
        known = rows_acc if (rows_acc is not None and k == cfg.k_rows) else None
        out.append(sweep_row(cut, p.build.precision, pool, ctx.encoder, "sim", k,
                             lambda k=k, known=known: known or fit_seeds(p.store, ctx.encoder, k, cfg.seeds)))
    return out


def recipe_rows(ctx, cut, backend: str, p: Prepared, rows_acc: dict | None) -> list[dict]:
    """Encoders on the rows' pooling, other poolings (one fp32 build each), and the linear probe."""
    cfg, out = ctx.cfg, []
    pool, k = p.summary["recipe"]["pool"], cfg.k_rows
    for enc in dict.fromkeys((ctx.encoder,) + tuple(cfg.sweep_encoders)):
        known = rows_acc if enc == ctx.encoder else None
        out.append(sweep_row(cut, "fp32", pool, enc, "sim", k,
                             lambda enc=enc, known=known: known or fit_seeds(p.store, enc, k, cfg.seeds)))
    for other in cfg.sweep_pools:
        if other == pool:
            continue
        def other_fit(other=other):
            q = prepare(ctx, cut, "fp32", backend, other, measure=False)
            return fit_seeds(q.store, ctx.encoder, k, cfg.seeds)
        out.append(sweep_row(cut, "fp32", other, ctx.encoder, "sim", k, other_fit))
    if cfg.linear_probe:
        out.append(sweep_row(cut, "fp32", pool, "none", "none", None,
                             lambda: fit_seeds(p.store, "none", None, 1, projection="none")))
    return out
