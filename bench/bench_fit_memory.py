"""Peak memory of `otl fit` as the training set grows 10x: streaming means it barely moves.

Two bit-packed feature stores with the reference's feature size (50,176 bits, DenseNet-169
denseblock4.12) and learnable synthetic classes, n and 10n training rows (same validation set).
`otl fit --features STORE --n-components K` runs on each in a subprocess; its peak RSS is read
from the kernel (the child's VmHWM). The in-memory alternative (all projected features as
one float32 matrix, n x K) is printed for comparison.

    python bench/bench_fit_memory.py [--rows 2000] [--features 50176] [--components 4000]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class SyntheticFeaturizer:
    """Gaussian features with a class-dependent mean on a few hundred dimensions."""

    engine = None

    def __init__(self, k: int, n_classes: int = 10, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.k, self.means = k, (rng.random((n_classes, k)) < 0.02).astype(np.float32) * 1.5

    def featurize(self, n_and_seed, desc=""):
        n, seed = n_and_seed
        rng = np.random.default_rng(seed)
        for i in range(0, n, 500):
            b = min(500, n - i)
            y = rng.integers(0, len(self.means), b)
            yield rng.standard_normal((b, self.k), dtype=np.float32) - 0.5 + self.means[y], y


def make_store(path: Path, n_train: int, k: int) -> None:
    from engine.store import write_store

    f = SyntheticFeaturizer(k)
    write_store(path, f, {"train": (n_train, 1), "validation": (500, 2), "test": (500, 3)}, fmt="bits",
                classes=[str(c) for c in range(10)])


def fit_peak(store: Path, components: int) -> tuple[float, dict]:
    code = (
        "import json, resource, sys; from engine.cli import main; "
        f"rc = main(['fit', '--features', {str(store)!r}, '--n-components', '{components}', '--json', '--quiet']); "
        # VmHWM is this process's own peak; ru_maxrss keeps, across exec, the RSS of the parent it
        # was forked from (here: the process that just wrote the stores)
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')]; "
        "peak = int(hwm[0].split()[1]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss; "
        "sys.stderr.write('PEAK %d\\n' % peak)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    if proc.returncode:
        raise SystemExit(proc.stderr[-2000:])
    peak_kb = int([ln for ln in proc.stderr.splitlines() if ln.startswith("PEAK ")][-1].split()[1])
    return peak_kb / 1024, json.loads(proc.stdout)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--features", type=int, default=50176)
    p.add_argument("--components", type=int, default=4000)
    p.add_argument("--quick", action="store_true", help="500 rows, 8,192 features, 1,000 components")
    a = p.parse_args(argv)
    if a.quick:
        a.rows, a.features, a.components = 500, 8192, 1000
    with tempfile.TemporaryDirectory() as tmp:
        out = {}
        for n in (a.rows, 10 * a.rows):
            store = Path(tmp) / f"store-{n}"
            make_store(store, n, a.features)
            out[n] = fit_peak(store, a.components)
            store_mb = sum(f.stat().st_size for f in store.iterdir()) / 2**20
            peak, res = out[n]
            print(f"  n_train {n:>7,}: peak RSS {peak:8.0f} MB  (store {store_mb:6.0f} MB on disk; "
                  f"in-memory projected features would be {n * a.components * 4 / 2**20:6.0f} MB)  "
                  f"test acc {100 * res['test_accuracy']:.1f}%  fit {res['timings']['total']:.1f}s")
    small, big = out[a.rows][0], out[10 * a.rows][0]
    print(f"{a.features:,} bits -> {a.components:,} components: peak memory x{big / small:.2f} "
          f"for 10x the training rows (goal <= 1.2x)")


if __name__ == "__main__":
    main()
