"""The report's headline: at the deepest cut, int8 and fp16 against fp32 (accuracy, engine speed,
size on disk) and gradient-free training against the backprop baseline (accuracy, training time),
backprop at its best epoch by test accuracy (how the reference reports it) and at its last.

Accuracy differences are paired: every precision is fitted with the same projection seeds, so the
difference and its standard error come from the per-seed differences."""
from __future__ import annotations

from engine.report.fits import mean_se


def _ok(rows, **match):
    return [r for r in rows if r.get("status") == "ok" and all(r.get(k) == v for k, v in match.items())]


def paired_difference(a: dict, b: dict) -> tuple[float | None, float | None]:
    """(mean, se) of a's minus b's accuracy over the seeds both have."""
    pa = dict(zip(a["seeds"], a["per_seed_pct"]))
    pb = dict(zip(b["seeds"], b["per_seed_pct"]))
    common = sorted(set(pa) & set(pb))
    return mean_se([pa[s] - pb[s] for s in common])


def _round(x, digits=3):
    return None if x is None else round(x, digits)


def versus_fp32(row: dict, ref: dict) -> dict:
    diff, se = paired_difference(row["accuracy"], ref["accuracy"])
    return {"accuracy_points": _round(diff), "se_points": _round(se),
            "speedup": _round(row["featurize"]["images_per_s"] / ref["featurize"]["images_per_s"]),
            "latency_ratio_p50": _round(row["featurize"]["latency_ms"]["p50"] / ref["featurize"]["latency_ms"]["p50"]),
            "size_ratio": _round(row["build"]["artifact_mb"] / ref["build"]["artifact_mb"]),
            "emulated": bool(row["emulated"]), "backend": row["backend"]}


def headline(rep: dict) -> dict:
    variants = rep.get("variants") or []
    fp32 = _ok(variants, precision="fp32")
    if not fp32:
        return {"cut": None, "n_components": None, "int8_vs_fp32": None, "fp16_vs_fp32": None,
                "gradient_free_vs_backprop": None}
    ref = max(fp32, key=lambda r: r["backbone"]["parameters"])  # the deepest cut, its first backend
    out = {"cut": ref["cut"], "backend": ref["backend"], "n_components": ref["accuracy"]["n_components"],
           "fp32_pct": ref["accuracy"]["mean_pct"], "fp32_se_pct": ref["accuracy"]["se_pct"]}
    for prec in ("int8", "fp16"):
        rows = _ok(variants, precision=prec, cut=ref["cut"], backend=ref["backend"])
        out[f"{prec}_vs_fp32"] = versus_fp32(rows[0], ref) if rows else None
    out["gradient_free_vs_backprop"] = _versus_backprop(ref, _ok(rep.get("baseline") or [], cut=ref["cut"]))
    return out


def _versus_backprop(ref: dict, baselines: list) -> dict | None:
    if not baselines or not baselines[0].get("best"):
        return None
    best, last = baselines[0]["best"], baselines[0]["epochs"][-1]
    gf = ref["accuracy"]["mean_pct"]
    return {"gradient_free_pct": gf, "gradient_free_se_pct": ref["accuracy"]["se_pct"],
            "backprop_pct": best["accuracy_pct"], "accuracy_points": _round(gf - best["accuracy_pct"]),
            "gradient_free_training_s": ref["training_s"], "backprop_training_s": best["training_s"],
            "time_ratio": _round(best["training_s"] / ref["training_s"]) if ref["training_s"] else None,
            "backprop_best_epoch": best["epoch"],
            "backprop_epochs": len(baselines[0]["epochs"] or []),
            # the best epoch is chosen on test accuracy (as the reference reports it): the last epoch too
            "backprop_last_pct": last["accuracy_pct"], "backprop_last_training_s": last["training_s"]}
