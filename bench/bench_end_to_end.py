"""End to end on real photos: `otl fit` vs the reference pipeline, side by side in one run.

Reference (lightonai/transfer-learning-opu): torch eager fp32 features -> sign -> lightonml's
simulated OPU -> scikit-learn RidgeClassifier refit once per alpha, alpha chosen on validation/.
Ours: ONNX Runtime fp32 engine -> sign -> SimulatedOPU -> streaming normal equations, one
eigendecomposition for the grid, Cholesky for the final solve, alpha chosen on validation/.

Each pipeline runs in its own subprocess so its peak RSS is its own. Needs ../shared (clothing
photos and MobileNetV2 ImageNet weights) and lightonml (`make install-opu`).

    python bench/bench_end_to_end.py [--components 4000] [--precision fp32] [--quick]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
ALPHAS = tuple(float(m * 10 ** e) for e in (3, 4, 5) for m in (1, 3, 5, 7, 9))


def _torch_home() -> str:
    home = Path(tempfile.gettempdir()) / "otl-bench-torch-home"
    ckpt = home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    src = SHARED / "weights" / "torchvision" / "mobilenet_v2-b0353104.pth"
    dst = ckpt / src.name
    if not dst.exists():
        dst.symlink_to(src)
    return str(home)


def run_reference(data: str, k: int, limit: int | None, threads: int) -> dict:
    """The reference's way, stage by stage (its code, restated with today's APIs)."""
    import torch
    from lightonml import OPU
    from lightonml.internal.simulated_device import SimulatedOpuDevice
    from sklearn.linear_model import RidgeClassifier

    from engine.backbones import build_cut, preprocess_for
    from engine.data import iter_batches, load_splits

    torch.set_num_threads(threads)
    t: dict[str, float] = {}
    module, _ = build_cut("mobilenet_v2", None, "imagenet")
    splits = load_splits(data, preprocess_for("mobilenet_v2", "imagenet"))

    def feats(ds):
        xs, ys = [], []
        if limit:
            ds = ds.select(range(min(limit, len(ds))))
        for x, y, _ in iter_batches(ds, 32, progress=False):
            with torch.no_grad():
                xs.append((module(torch.from_numpy(x)).numpy() > 0).astype(np.uint8))  # plain_th, threshold 0
            ys.append(y)
        return np.concatenate(xs), np.concatenate(ys)

    t0 = time.perf_counter()
    (Xtr, ytr), (Xva, yva), (Xte, yte) = feats(splits.train), feats(splits.validation), feats(splits.test)
    t["featurize+encode"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    opu = OPU(n_components=k, opu_device=SimulatedOpuDevice(), max_n_features=Xtr.shape[1])
    opu.fit1d(Xtr)
    Ytr, Yva, Yte = (np.asarray(opu.transform(X), dtype=np.float32) for X in (Xtr, Xva, Xte))
    t["project"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    best = (-1.0, None, None)
    for a in ALPHAS:  # the reference refits for every alpha
        clf = RidgeClassifier(alpha=a).fit(Ytr, ytr)
        acc = clf.score(Yva, yva)
        if acc > best[0] or (acc == best[0] and a > best[1]):
            best = (acc, a, clf)
    t["solve"] = time.perf_counter() - t0
    return {"validation_accuracy": best[0], "alpha": best[1], "test_accuracy": float(best[2].score(Yte, yte)),
            "n_train": len(ytr), "timings": t}


def run_ours(data: str, k: int, limit: int | None, threads: int, precision: str, build: str) -> dict:
    from engine.build import EngineConfig, build_engine
    from engine.train import FitConfig, fit

    t0 = time.perf_counter()
    res = build_engine(EngineConfig(model="mobilenet_v2", weights="imagenet", precision=precision,
                                    backend="onnxruntime", out=build, data=data, threads=threads))
    build_s = time.perf_counter() - t0
    if limit:
        raise SystemExit("--limit applies to the reference only; use --quick for both")
    _, s = fit(FitConfig(engine=res["build_dir"], data=data, n_components=k, threads=threads, progress=False))
    s["timings"]["engine_build_not_counted"] = build_s
    return s


def _child(args) -> None:
    os.environ["TORCH_HOME"] = _torch_home()
    if args.child == "reference":
        out = run_reference(args.data, args.components, args.limit, args.threads)
    else:
        out = run_ours(args.data, args.components, args.limit, args.threads, args.precision, args.build)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out, default=float))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(SHARED / "data" / "clothing"))
    p.add_argument("--components", type=int, default=4000)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--build", default=str(REPO / "builds" / "bench-mobilenet_v2"))
    p.add_argument("--quick", action="store_true", help="1,000 components")
    p.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return _child(a)
    if not Path(a.data).is_dir():
        print(f"skipped: {a.data} not found (needs ../shared)")
        return
    if a.quick:
        a.components = 1000
    results = {}
    # Ours first builds (or reuses) its engine outside the timed fit; the reference needs none.
    for name in ("ours", "reference"):
        cmd = [sys.executable, __file__, "--child", name, "--data", a.data, "--components", str(a.components),
               "--threads", str(a.threads), "--precision", a.precision, "--build", f"{a.build}-{a.precision}"]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not line:
            print(f"{name} failed:\n{proc.stderr[-3000:]}")
            return
        results[name] = json.loads(line[0][7:])
        results[name]["process_wall_s"] = wall
    o, r = results["ours"], results["reference"]
    t_o = o["timings"]["total"]
    t_r = sum(r["timings"].values())
    print(f"clothing, mobilenet_v2 ImageNet, full features, {a.components} components, {a.threads} threads")
    print(f"  {'':12}{'test acc':>10}{'val acc':>10}{'alpha':>9}{'time s':>9}{'peak MB':>9}  stages")
    for name, res, tt in (("otl fit", o, t_o), ("reference", r, t_r)):
        stages = ", ".join(f"{k} {v:.1f}" for k, v in res["timings"].items() if k != "total")
        print(f"  {name:12}{100 * res['test_accuracy']:>9.2f}%{100 * res['validation_accuracy']:>9.2f}%"
              f"{res['alpha']:>9g}{tt:>9.1f}{res['peak_rss_mb']:>9.0f}  {stages}")
    print(f"  speed-up {t_r / t_o:.2f}x (goal >= 3x); accuracy {100 * (o['test_accuracy'] - r['test_accuracy']):+.2f} "
          f"points (goal >= 0); peak memory ratio {o['peak_rss_mb'] / r['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    main()
