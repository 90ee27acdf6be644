"""One variant's engine numbers: its build, a float feature store of its splits (both reused by
key), throughput at batch 32, latency at batch 1, peak memory, and agreement with fp32."""
from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from engine.timing import Timings, timed_items
from kernels.io import atomic_write_json
from kernels.xp import to_host

MB = 1e6
STORE_FORMAT = "float32"  # float16 underflows: random-init features are ~1e-9
TIMINGS_FILE = "featurize-timings.json"


def file_mb(path: Path) -> float:
    return round(Path(path).stat().st_size / MB, 3)


def backbone_size(model: str, cut, weights: str, seed: int, input_size: int) -> dict:
    """Parameters of the truncated backbone (fp32 MB = 4 bytes each) and its map shape."""
    from engine.backbones import build_cut, cut_map_shape

    module, resolved = build_cut(model, cut, weights, seed, pool="none", input_size=input_size)
    n = sum(int(p.numel()) for p in module.parameters())
    return {"parameters": n, "parameters_mb": round(4 * n / MB, 3),
            "map_shape": list(cut_map_shape(model, resolved.name, input_size))}


class PeakMemory:
    """Samples this process's resident memory every `every` seconds while active: the peak in MB."""

    def __init__(self, every: float = 0.02):
        import psutil

        self.proc, self.every, self.peak = psutil.Process(), every, 0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            self._stop.wait(self.every)

    @contextmanager
    def watch(self):
        self._stop.clear()
        th = threading.Thread(target=self._sample, daemon=True)
        th.start()
        try:
            yield self
        finally:
            self._stop.set()
            th.join()
            self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def mb(self) -> float:
        return round(self.peak / MB, 1)


class TimedFeaturizer:
    """A Featurizer whose batches are timed per split: stage `featurize_<split>`."""

    def __init__(self, featurizer, t: Timings):
        self.inner, self.build, self.t = featurizer, featurizer.build, t

    def featurize(self, dataset, desc: str = "featurize"):
        return timed_items(self.inner.featurize(dataset, desc=desc), self.t, "featurize_" + desc.split()[-1])


def store_matches(path: Path, build_key: str, source: dict) -> bool:
    """A complete float store of this build over the same split files (hashes compared)."""
    from engine.artifacts import ArtifactError
    from engine.store import FeatureStore

    if not (path / "manifest.json").exists() or not (path / TIMINGS_FILE).exists():
        return False
    try:
        store = FeatureStore(path, build_key=build_key)
    except ArtifactError:
        return False
    stored = (store.manifest.get("source") or {}).get("split_hashes")
    return store.format == STORE_FORMAT and stored == source.get("split_hashes")


def write_features(path: Path, featurizer, splits, force: bool) -> tuple[dict, bool]:
    """({featurize_<split>: seconds}, reused): the float store at `path`, made unless it matches."""
    from engine.store import write_store

    if not force and store_matches(path, featurizer.build.key, splits.source):
        return json.loads((path / TIMINGS_FILE).read_text()), True
    t = Timings()
    parts = {"train": splits.train, "test": splits.test}
    write_store(path, TimedFeaturizer(featurizer, t), parts, fmt=STORE_FORMAT, classes=splits.classes,
                source=splits.source)
    seconds = t.as_dict()
    atomic_write_json(path / TIMINGS_FILE, seconds)
    return seconds, False


def check_features(store, precision: str) -> None:
    """Refuse a store whose train features are all zero (fp16 underflow of tiny activations)."""
    if store.rows("train") and not np.any(store.raw("train")):
        raise ValueError(f"every {precision} feature of the train split is 0: nothing to learn from. Random-init "
                         "backbones give activations near 1e-9, below fp16's smallest value (6e-8); use trained "
                         "weights, or leave fp16 out")


def first_images(dataset, n: int) -> np.ndarray:
    """The first n readable images of a dataset, preprocessed: (n', 3, H, W) float32."""
    out = []
    for i in range(len(dataset)):
        x, _ = dataset.load(i)
        if x is not None:
            out.append(x)
        if len(out) == n:
            break
    if not out:
        raise ValueError("the test split has no readable image to time the engine on")
    return np.stack(out).astype(np.float32)


def speed(runner, images: np.ndarray, batch: int, warmup: int, runs: int) -> dict:
    """Engine-only speed on decoded images: images/s at `batch` (median of timed repeats) and
    batch-1 latency percentiles over `runs` single-image inferences after `warmup` untimed ones."""
    x = np.resize(images, (batch,) + images.shape[1:]) if len(images) < batch else images[:batch]
    to_host(runner.infer(x))  # the batch shape's own first run
    reps = []
    while len(reps) < 3 or (sum(reps) < 1.0 and len(reps) < 50):
        t1 = time.perf_counter()
        to_host(runner.infer(x))
        reps.append(time.perf_counter() - t1)
    t0 = time.perf_counter()
    for i in range(warmup):  # batch 1, right before its timed runs
        to_host(runner.infer(images[i % len(images)][None]))
    warmup_s = time.perf_counter() - t0
    lat = []
    for i in range(runs):
        t1 = time.perf_counter()
        to_host(runner.infer(images[i % len(images)][None]))
        lat.append(1e3 * (time.perf_counter() - t1))
    p = np.percentile(lat, [50, 95, 99])
    return {"batch": batch, "images_per_s": round(batch / float(np.median(reps)), 2),
            "latency_ms": {"p50": round(float(p[0]), 3), "p95": round(float(p[1]), 3), "p99": round(float(p[2]), 3)},
            "warmup_s": round(warmup_s, 4), "warmup_runs": warmup, "latency_runs": runs}


def gpu_used_mb() -> float | None:
    """Device memory in use (all processes) when CuPy sees a GPU, else None."""
    try:
        import cupy

        free, total = cupy.cuda.runtime.memGetInfo()
        return round((total - free) / MB, 1)
    except Exception:  # noqa: BLE001 - no CuPy or no GPU: there is no GPU number to give
        return None


def agreement(store, ref_store, reference_id: str, encoder: str = "threshold:median") -> dict:
    """The test split's features against fp32's: mean per-image cosine, relative L2 over the split,
    and the bits after the rows' encoder fitted on fp32's train rows (the same thresholds for both)."""
    from kernels.encode import parse_encoder

    a = np.asarray(store.raw("test"), dtype=np.float64)
    b = np.asarray(ref_store.raw("test"), dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"test features {a.shape} and fp32's {b.shape} differ: not the same cut and split")
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    cos = np.sum(a * b, axis=1) / np.maximum(na * nb, 1e-300)
    enc = parse_encoder(encoder)
    enc.fit(ref_store.sample("train"))
    bits_a, bits_b = to_host(enc(a.astype(np.float32))), to_host(enc(b.astype(np.float32)))
    flips = bits_a != bits_b
    return {"reference": reference_id, "cosine": round(float(cos.mean()), 6),
            "relative_l2": round(float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)), 6),
            "bit_agreement_pct": round(100 * (1 - float(flips.mean())), 4),
            "images_with_flips_pct": round(100 * float(flips.any(axis=1).mean()), 3)}
