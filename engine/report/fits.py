"""Accuracy over projection seeds from a float feature store: encoder -> projection -> ridge, alpha
by `auto` selection on the training rows (exact leave-one-out while they fit in memory, else
K-fold; the method is recorded), scored on the test split."""
from __future__ import annotations

import math
import time

import numpy as np

from engine.timing import Timings, timed_items

FIT_STAGES = ("load", "encode", "project", "select", "solve", "predict")


def mean_se(values) -> tuple[float | None, float | None]:
    """(mean, standard error = sample standard deviation / sqrt(n)); se None for one value."""
    v = [float(x) for x in values]
    if not v:
        return None, None
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, None
    var = sum((x - m) ** 2 for x in v) / (len(v) - 1)
    return m, math.sqrt(var / len(v))


def fit_once(store, encoder: str, n_components: int | None, seed: int, projection: str = "sim") -> dict:
    """One fit and test score. Stages (seconds): load (reading the store), encode (encoder statistics
    and bits), project, select (alpha), solve (normal equations and the final solve), predict (the
    test split: encode, project, classify). Their sum is the fit's wall time, less bookkeeping."""
    from engine.classifier import TransferClassifier
    from engine.evaluate import accuracy
    from kernels.encode import parse_encoder

    t = Timings()
    enc = parse_encoder(encoder)
    if enc.needs_fit:
        with t("encode"):
            enc.fit(store.sample("train", seed=seed))
    clf = TransferClassifier(n_components or 1, enc, "auto", projection, seed, select="auto")
    clf.fit_stream(timed_items(store.iter_batches("train", 1024), t, "load"), classes=store.classes)
    fit_t = clf.timings_.as_dict()
    for ours, theirs in (("encode", "encode"), ("project", "project"), ("select", "select_alpha"),
                         ("solve", "solve")):
        t.add(ours, fit_t.get(theirs, 0.0))
    t0 = time.perf_counter()
    acc, n = accuracy(clf, store.iter_batches("test", 1024), encoded=False)
    t.add("predict", time.perf_counter() - t0)
    if n == 0:
        raise ValueError("the test split is empty: nothing to score")
    sec = t.as_dict()
    return {"accuracy_pct": 100 * acc, "alpha": float(clf.alpha_), "n_test": n,
            "select": clf.selection_.method if clf.selection_ is not None else "none",
            "timings_s": {k: sec.get(k, 0.0) for k in FIT_STAGES},
            "fit_s": sum(sec.get(k, 0.0) for k in FIT_STAGES if k != "predict")}


def fit_seeds(store, encoder: str, n_components: int | None, seeds: int, projection: str = "sim") -> dict:
    """Accuracy mean +- se over seeds 0..seeds-1 (one fit when there is no projection: no randomness)."""
    runs = [fit_once(store, encoder, n_components, s, projection)
            for s in range(seeds if projection != "none" else 1)]
    mean, se = mean_se([r["accuracy_pct"] for r in runs])
    timings = {k: round(sum(r["timings_s"][k] for r in runs), 4) for k in FIT_STAGES}
    return {"mean_pct": round(mean, 4), "se_pct": None if se is None else round(se, 4),
            "per_seed_pct": [round(r["accuracy_pct"], 4) for r in runs], "seeds": list(range(len(runs))),
            "n_components": n_components if projection != "none" else None, "encoder": encoder,
            "alphas": [r["alpha"] for r in runs], "select": sorted({r["select"] for r in runs}),
            "timings_s": timings,
            "fit_s_median": round(float(np.median([r["fit_s"] for r in runs])), 4),
            "predict_s_median": round(float(np.median([r["timings_s"]["predict"] for r in runs])), 4),
            "n_test": runs[0]["n_test"]}
