"""Simulated OPU vs lightonml's SimulatedOpuDevice: time (matrix creation included) and peak RSS.

Each contender runs in its own child process (peak RSS = ru_maxrss of that child, which counts
its own imports: torch for ours, not for lightonml), on the same seeded binary input. "+MB over
base" is the peak minus the RSS after imports and input creation: the memory the method adds. Usage: python bench/bench_projection.py [--quick] [--repeat R] [--threads T]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(kind: str, n: int, k: int, m: int, variant: str) -> dict:
    """One contender in this process: kind "lightonml" or "fast"; variant "<dtype>:cache|nocache"."""
    import warnings

    import numpy as np

    warnings.filterwarnings("ignore")
    sys.path.insert(0, ROOT)
    if kind == "lightonml":
        from lightonml import OPU
        from lightonml.internal.simulated_device import SimulatedOpuDevice
    else:
        import torch  # noqa: F401  loaded by the engine anyway; its import is not timed here

        from kernels.projection import SimulatedOPU
    x = np.random.default_rng(0).integers(0, 2, (n, k), dtype=np.uint8)  # no float temporaries
    base = _rss_mb()
    t0 = time.perf_counter()
    if kind == "lightonml":
        opu = OPU(n_components=m, opu_device=SimulatedOpuDevice(), max_n_features=k, disable_pbar=True)
        opu.fit1d(n_features=k)
        y = np.asarray(opu.transform(x))
    else:
        dtype, cache = variant.split(":")
        y = SimulatedOPU(m, seed=0, matrix_dtype=dtype, cache=cache == "cache").fit(k, batch=n).transform(x)
    dt = time.perf_counter() - t0
    return {"kind": kind, "seconds": dt, "peak_mb": _rss_mb(), "base_mb": base,
            "mean": float(y.mean()), "theory_mean": float(2 * x.sum(1).mean() / k)}


def run_child(kind, args, variant):
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), OPENBLAS_NUM_THREADS=str(args.threads),
               MKL_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, __file__, "--worker", kind, "--n", str(args.n), "--k", str(args.k),
           "--m", str(args.m), "--variant", variant]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="500 x 8192 bits -> 1000 components")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variants", default="int8:nocache,int8:cache,bfloat16:nocache,float32:nocache",
                   help="fast-mode matrix_dtype:cache|nocache list (nocache: the one-shot setting)")
    p.add_argument("--n", type=int, default=2000, help="input rows")
    p.add_argument("--k", type=int, default=50176, help="input bits a row (d in kernels/)")
    p.add_argument("--m", type=int, default=4000, help="output components (n_components, k in kernels/)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--variant", default="int8:nocache", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.k, args.m, args.variant)))
        return
    if args.quick:
        args.n, args.k, args.m = 500, 8192, 1000
    print(f"input {args.n} x {args.k} bits -> {args.m} components, {args.threads} threads, "
          f"repeat {args.repeat} (medians)")
    names = ["lightonml"] + [f"fast/{v}" for v in args.variants.split(",")]
    runs = {name: [] for name in names}
    for _ in range(args.repeat):  # interleaved, so a busy machine slows every contender alike
        for name in names:
            kind, _, variant = name.partition("/")
            runs[name].append(run_child(kind, args, variant or "float32:cache"))
    med = {name: {key: statistics.median(r[key] for r in rs) for key in ("seconds", "peak_mb", "base_mb")}
           for name, rs in runs.items()}
    ref = med["lightonml"]
    print(f"{'':>24} {'seconds':>9} {'images/s':>9} {'peak MB':>9} {'+MB over base':>14} "
          f"{'speedup':>8} {'peak ratio':>11} {'+MB ratio':>10} {'mean/theory':>12}")
    for name, r in med.items():
        extra, ref_extra = r["peak_mb"] - r["base_mb"], ref["peak_mb"] - ref["base_mb"]
        mt = runs[name][0]["mean"] / runs[name][0]["theory_mean"]
        print(f"{name:>24} {r['seconds']:9.2f} {args.n / r['seconds']:9.1f} {r['peak_mb']:9.0f} "
              f"{extra:14.0f} {ref['seconds'] / r['seconds']:7.1f}x {r['peak_mb'] / ref['peak_mb']:11.3f} "
              f"{extra / ref_extra:10.3f} {mt:12.4f}")


if __name__ == "__main__":
    main()
