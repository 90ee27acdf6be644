"""Feature recipes side by side: which cut features, encoder and preprocessing transfer best.

Real photos (../shared/data/clothing: 10 classes, 3,068 train / 372 test), MobileNetV2 ImageNet
fp32 on ONNX Runtime. The full 1280x7x7 map is featurized once per preprocessing (crop: the
weights' resize + center crop; squash: the reference's Resize((224, 224))) into a float16 store;
pooled features are the store's map averaged the way the engine's AdaptiveAvgPool2d does it
(tests/engine/test_recipe.py checks the engine's pooling against torch). For training sets of 10, 20, 50
images per class and the full train/ (3 draws each: draw d takes its own seeded subset and its own
projection seed d), every recipe is fitted with alpha by `auto` selection (exact leave-one-out
here) and scored on the same 372 test images. Prints mean +- standard error over the draws and the
fit time (encoding + projection + selection + solve; featurization is the same for every recipe and
printed once). With --backprop JSON (bench/bench_backprop.py's output) it adds the fine-tuning
baseline and checks the goal: the default recipe within 1 point of the best backprop epoch at every
size, at >= 10x less training time.

    python bench/bench_recipes.py [--sizes 10,20,50,full] [--draws 3] [--components 2000,4000,8000]
                                  [--backprop /tmp/backprop.json] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_selection import CLOTHING, clothing_ready, draw  # noqa: E402

def _default():
    """(resize, pool, encoder, projection, input size, head): what otl uses when nothing is said (README)."""
    from engine.backbones import DEFAULT_POOL, default_input_size
    from engine.train import DEFAULT_PROJECTION, FitConfig, default_encoder

    return ("crop", DEFAULT_POOL, default_encoder(DEFAULT_PROJECTION), DEFAULT_PROJECTION, default_input_size(224),
            FitConfig.head)


def is_default(r: dict) -> bool:  # results written before the logistic head were all ridge
    return (r["resize"], r["pool"], r["encoder"], r["projection"], r.get("input_size", 224),
            r.get("head", "ridge")) == DEFAULT


DEFAULT = _default()


def recipes(components, group="all"):
    """(name, resize, pool, encoder, projection, K, input size, head) for every recipe the bench compares.
    group "224": the recipes at the weights' 224 crop; "288": the larger input (a 9x9 map); "all": both."""
    out = []
    if group in ("all", "288"):
        out.append(("288, avg3 floats, auto head", "crop", "avg3", "none", "none", None, 288, "auto"))
        out.append(("288, avg3 floats, logistic head", "crop", "avg3", "none", "none", None, 288, "logistic"))
        out.append(("288, avg3, threshold:median, logistic head", "crop", "avg3", "threshold:median", "sim",
                    max(components), 288, "logistic"))
        for pool in ("avg2", "avg3"):
            out.append((f"288, {pool} floats, ridge without projection", "crop", pool, "none", "none", None, 288,
                        "ridge"))
            for k in components:
                out.append((f"288, {pool}, threshold:median", "crop", pool, "threshold:median", "sim", k, 288,
                            "ridge"))
        out.append(("288, avg3, thresholds:2", "crop", "avg3", "thresholds:2", "sim", max(components), 288, "ridge"))
    if group == "288":
        return out
    out += [r + (224, "ridge") for r in _recipes_224(components)]
    return out


def _recipes_224(components):
    out = []
    for k in components:
        out.append(("full map, sign (otl's old recipe)", "crop", "none", "sign", "sim", k))
    out.append(("reference exact: squash, full map, sign", "squash", "none", "sign", "sim", 4000))
    for pool in ("avg", "avg2"):
        for enc in ("threshold:median", "thresholds:8"):
            for k in components:
                out.append((f"{pool}, {enc}", "crop", pool, enc, "sim", k))
            out.append((f"squash, {pool}, {enc}", "squash", pool, enc, "sim", 4000))
        out.append((f"{pool} floats, ridge without projection", "crop", pool, "none", "none", None))
    return out


def adaptive_avg(maps: np.ndarray, n: int) -> np.ndarray:
    """(rows, C, H, W) -> (rows, C*n*n): torch's adaptive_avg_pool2d bins, flattened C-major."""
    rows, c, h, w = maps.shape
    out = np.empty((rows, c, n, n), np.float32)
    for i in range(n):
        hs, he = (i * h) // n, -(-((i + 1) * h) // n)
        for j in range(n):
            ws, we = (j * w) // n, -(-((j + 1) * w) // n)
            out[:, :, i, j] = maps[:, :, hs:he, ws:we].mean(axis=(2, 3), dtype=np.float32)
    return out.reshape(rows, -1)


def featurize(resize: str, root: Path, threads: int, size: int = 224, splits=("train", "test")) -> dict:
    """Float16 full-map store for one preprocessing, input size and set of splits, built once (reused by
    the build's key); returns {split: maps, "y" + split: labels, "seconds_per_image": ...}."""
    from engine.build import BuildConfig, make_build
    from engine.data import load_splits
    from engine.featurize import Featurizer
    from engine.build_folder import Build
    from engine.store import FeatureStore, write_store

    res = make_build(BuildConfig(model="mobilenet_v2", weights="imagenet", precision="fp32", resize=resize,
                                 input_size=size, pool="none", backend="onnxruntime",
                                 out=str(root / f"engine-{resize}{_tag(size)}"), threads=threads))
    eng = Build(res["build_dir"], threads=threads)
    name = f"store-{resize}{_tag(size)}" + ("" if tuple(splits) == ("train", "test") else "-" + "-".join(splits))
    store, meta = root / name, root / f"{name}.timing.json"
    if not (store / "manifest.json").exists() or FeatureStore(store).build_info.get("key") != eng.key:
        sp = load_splits(str(CLOTHING), eng.preprocess)
        parts = {split: getattr(sp, split) for split in splits}
        missing = [split for split, ds in parts.items() if ds is None]
        if missing:
            raise SystemExit(f"{CLOTHING} has no {', '.join(missing)} split")
        t0 = time.perf_counter()
        with Featurizer(eng, 32, progress=False) as f:
            write_store(store, f, parts, fmt="float16", classes=sp.classes, source=sp.source)
        n = sum(len(ds) for ds in parts.values())
        meta.write_text(json.dumps({"seconds": time.perf_counter() - t0, "images": n}))
    s = FeatureStore(store)
    out = {}
    for split in splits:
        out[split] = np.concatenate([b for b, _ in s.iter_batches(split, 1024)])
        out["y" + split] = s.labels(split)
    timing = json.loads(meta.read_text())
    return {**out, "seconds_per_image": timing["seconds"] / timing["images"]}


def _tag(size: int) -> str:
    return "" if size == 224 else f"-{size}"


def pooled(maps_flat: np.ndarray, pool: str, size: int = 224) -> np.ndarray:
    if pool == "none":
        return maps_flat
    n = 1 if pool == "avg" else int(pool[3:])
    side = size // 32  # MobileNetV2's map: 7x7 at 224, 9x9 at 288
    return adaptive_avg(maps_flat.reshape(len(maps_flat), 1280, side, side), n)


def fit_score(X, y, Xt, yt, enc, projection, k, seed, head="ridge"):
    import warnings

    from engine.classifier import TransferClassifier

    clf = TransferClassifier(n_components=k or 1, encoder=enc, projection=projection, seed=seed, head=head)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    fit_s = time.perf_counter() - t0
    return float(np.mean(clf.predict(Xt) == yt)), fit_s


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,20,50,full")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--components", default="2000,4000,8000")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--group", default="all", choices=("all", "224", "288"),
                    help="recipes at the 224 crop, at the 288 input, or both")
    ap.add_argument("--work", default="/tmp/otl-bench-recipes", help="engines and float stores (reused)")
    ap.add_argument("--backprop", default=None, help="bench_backprop.py --json output to compare with")
    ap.add_argument("--json", default=None, help="write every result here")
    ap.add_argument("--only", default=None, help="run only the recipes whose name contains this")
    ap.add_argument("--results", default=None, help="print the summary of an earlier run's --json, measure nothing")
    a = ap.parse_args()
    if a.results:
        old = json.loads(Path(a.results).read_text())
        _summary(old["results"], old["featurize_s_per_image"], a.backprop)
        return 0
    if not clothing_ready():
        return 0
    os.environ.setdefault("OTL_CACHE_DIR", str(Path(a.work) / "matrix-cache"))
    root = Path(a.work)
    root.mkdir(parents=True, exist_ok=True)
    comps = [int(c) for c in a.components.split(",")]
    todo = [r for r in recipes(comps, a.group) if not a.only or a.only in r[0]]
    data = {(r, z): featurize(r, root, a.threads, z) for r, z in sorted({(t[1], t[6]) for t in todo})}
    per_image = {z: d["seconds_per_image"] for (r, z), d in data.items() if r == "crop"}
    for z, s in sorted(per_image.items()):
        print(f"featurization at {z}: {s * 1e3:.1f} ms/image")
    sizes = [None if s == "full" else int(s) for s in a.sizes.split(",")]
    results = []
    for size in sizes:
        label = "full" if size is None else f"{size}/class"
        draws = range(a.draws)
        y0 = next(iter(data.values()))["ytrain"]  # the same files and order at every size and resize
        idx = {d: draw(y0, size, seed=d) for d in draws}
        print(f"\n== {label}: {len(idx[0])} training rows, {len(next(iter(data.values()))['ytest'])} test images, "
              f"{a.draws} draws")
        print(f"  {'recipe':<44} {'K':>6} {'accuracy %':>14} {'fit s':>7}")
        for name, resize, pool, enc, proj, k, isz, head in todo:
            d0 = data[(resize, isz)]
            Xt = pooled(d0["test"], pool, isz)
            accs, secs = [], []
            for d in draws:
                X = pooled(d0["train"][idx[d]], pool, isz)
                acc, s = fit_score(X, d0["ytrain"][idx[d]], Xt, d0["ytest"], enc, proj, k, seed=d, head=head)
                accs.append(100 * acc)
                secs.append(s)
            m, se = float(np.mean(accs)), float(np.std(accs, ddof=1) / np.sqrt(len(accs))) if len(accs) > 1 else 0.0
            results.append({"size": label, "rows": len(idx[0]), "recipe": name, "resize": resize, "pool": pool,
                            "input_size": isz, "featurize_s_per_image": per_image.get(isz),
                            "encoder": enc, "projection": proj, "k": k, "head": head, "accuracy": m, "se": se,
                            "fit_s": float(np.median(secs)), "accuracies": accs})
            star = " <- default" if (resize, pool, enc, proj, isz, head) == DEFAULT else ""
            print(f"  {name:<44} {k or '-':>6} {m:>7.2f} +- {se:<4.2f} {np.median(secs):>7.2f}{star}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps({"results": results, "featurize_s_per_image": per_image}, indent=1))
    _summary(results, per_image, a.backprop)
    return 0


def _summary(results, per_image, backprop_path) -> None:
    print("\n== mean accuracy over sizes (each size weighs the same)")
    keys = sorted({(r["recipe"], r["k"]) for r in results}, key=lambda rk: -np.mean(
        [r["accuracy"] for r in results if (r["recipe"], r["k"]) == rk]))
    for rk in keys[:8]:
        accs = [r["accuracy"] for r in results if (r["recipe"], r["k"]) == rk]
        print(f"  {rk[0]:<44} {rk[1] or '-':>6} {np.mean(accs):7.2f}")
    if not backprop_path:
        return
    bp = json.loads(Path(backprop_path).read_text())
    print(f"\n== default recipe ({', '.join(map(str, DEFAULT))}) vs backprop (best epoch)")
    ok = True
    for b in bp["results"]:
        if "best_accuracy" not in b:
            continue
        mine = [r for r in results if r["size"] == b["size"] and is_default(r)]
        if not mine:
            continue
        r = mine[0]
        img_s = r.get("featurize_s_per_image") or (per_image if isinstance(per_image, float) else per_image["224"])
        train_s = r["rows"] * img_s + r["fit_s"]
        gap, speed = r["accuracy"] - b["best_accuracy"], b["best_epoch_seconds"] / train_s
        ok &= gap >= -1.0 and speed >= 10
        print(f"  {b['size']:>9}: otl {r['accuracy']:.2f} +- {r['se']:.2f} in {train_s:.1f} s (featurize + fit); "
              f"backprop {b['best_accuracy']:.2f} +- {b['best_se']:.2f} at epoch {b['best_epoch']} in "
              f"{b['best_epoch_seconds']:.1f} s; gap {gap:+.2f} pts, {speed:.1f}x less time")
    print(f"  goal (within 1 point, >= 10x less training time at every size): {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    sys.exit(main())
