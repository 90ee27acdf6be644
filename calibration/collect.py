"""calibrate(), the package's entry point: histograms of every tensor the Q/DQ encodings need,
collected with hooks on the torch module the ONNX model was exported from, then one amax per
tensor (calibration.entropy), cached on disk (calibration.result).

Hooks run on the module's device: |x|, min and max are reduced there and only the 2048 counts
come back to the CPU, so calibration runs on the GPU when the module is on one. Which hook sees
which ONNX tensor is calibration.mapping's job.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx

from calibration.entropy import DEFAULT_PERCENTILE, candidate_amax, check_method
from calibration.histogram import NUM_BINS, TensorHistogram
from calibration.mapping import Probe, map_tensors, nodes_per_scope
from calibration.placement import calibration_tensors
from calibration.result import CalibrationResult, load_cache, save_cache
from calibration.scales import floor_amax
from kernels.progress import progress_bar

log = logging.getLogger(__name__)


class HistogramCollector:
    """Forward hooks that histogram the probed tensors; use as a context manager.

    hists: tensor name -> TensorHistogram; batch_index is set by the caller before each forward.
    """

    def __init__(self, module, probes: dict[str, Probe], expected_calls: dict[str, int], num_bins: int = NUM_BINS):
        self.module = module
        self.probes = probes
        self.expected_calls = expected_calls
        self.hists = {t: TensorHistogram(num_bins) for t in probes}
        # per-channel (dim 1) sums for the weight bias correction in calibration.bias
        self.channel_sums: dict = {}
        self.channel_counts: dict[str, int] = defaultdict(int)
        self.batch_index = 0
        self._table: dict[tuple[str, str, int], str] = {(p.module, p.kind, p.call): t for t, p in probes.items()}
        self._calls: dict[tuple[str, str], int] = defaultdict(int)
        self._handles = []

    def _observe(self, name: str, kind: str, x) -> None:
        import torch

        call = self._calls[(name, kind)]
        self._calls[(name, kind)] = call + 1
        t = self._table.get((name, kind, call))
        if t is None or not isinstance(x, torch.Tensor):
            return
        x = x.detach()
        a = x.abs()
        amax, xmin = float(a.max()), float(x.min())
        if not (math.isfinite(amax) and math.isfinite(xmin)):
            what = "NaN" if bool(torch.isnan(x).any()) else "Inf"
            raise FloatingPointError(
                f"{what} in activation tensor {t!r} (module {name!r} {kind}) at calibration batch "
                f"{self.batch_index}; check the input images and the weights")
        self.hists[t].add_abs(a, xmin, amax)
        if x.ndim >= 2:
            dims = [d for d in range(x.ndim) if d != 1]
            s = x.sum(dim=dims).double()  # float32 within a batch (a float64 sum is ~25x slower), float64 across
            self.channel_sums[t] = s if t not in self.channel_sums else self.channel_sums[t] + s
            self.channel_counts[t] += x.numel() // x.shape[1]

    def channel_means(self) -> dict[str, list[float]]:
        """Mean over batch and spatial positions of each channel (dim 1), per tensor."""
        return {t: (s / max(self.channel_counts[t], 1)).cpu().tolist() for t, s in self.channel_sums.items()
                if t in self.hists}

    def __enter__(self):
        mods = dict(self.module.named_modules())
        for name, kind in {(p.module, p.kind) for p in self.probes.values()}:
            m = mods[name]
            if kind == "input":
                h = m.register_forward_pre_hook(lambda _m, args, n=name: self._observe(n, "input", args[0]))
            else:
                h = m.register_forward_hook(lambda _m, _a, out, n=name: self._observe(n, "output", out))
            self._handles.append(h)
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def end_batch(self) -> None:
        """Check calls per forward against the ONNX graph (first batch) and reset the counters."""
        if self.batch_index == 0:
            for (name, kind), n in list(self._calls.items()):
                want = self.expected_calls.get(name)
                if kind == "output" and want is not None and n != want:
                    bad = [t for t, p in self.probes.items() if p.module == name and p.kind == kind]
                    warnings.warn(f"module {name!r} ran {n} times per forward but has {want} ONNX nodes; "
                                  f"tensors {bad} cannot be matched and stay fp32")
                    for t in bad:
                        del self.hists[t]
                        self._table = {k: v for k, v in self._table.items() if v != t}
        self._calls.clear()


def _batch_tensor(batch):
    import torch

    if isinstance(batch, (tuple, list)):
        batch = batch[0]
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if not isinstance(batch, torch.Tensor) or batch.ndim < 2:
        raise TypeError(f"a calibration batch must be an (N, C, H, W) tensor or array (or a tuple whose "
                        f"first item is one), got {type(batch).__name__}")
    return batch


def _device(module):
    import torch

    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def collect_histograms(module, batches, onnx_model, num_images: int = 512, tensors=None,
                       progress: bool | None = None, means: dict | None = None,
                       ) -> tuple[dict[str, TensorHistogram], int, list[str]]:
    """Histograms of the ONNX tensors (default: every tensor a Q/DQ encoding needs).

    batches: iterable of float32 (N, C, H, W) tensors/arrays, already normalized; stops after
    num_images (fewer is fine: the count used is returned). Returns (hists, images used, unmapped
    tensor names). When `means` is a dict, it receives each tensor's per-channel (dim 1) mean.
    """
    import torch

    tensors = list(tensors) if tensors is not None else calibration_tensors(onnx_model)
    probes, unmapped = map_tensors(onnx_model, module, tensors)
    if unmapped:
        log.warning("%d ONNX tensors have no torch counterpart and stay fp32: %s", len(unmapped), unmapped[:5])
    device = _device(module)
    was_training = module.training
    module.eval()
    seen = 0
    try:
        with (HistogramCollector(module, probes, nodes_per_scope(onnx_model)) as col, torch.no_grad(),
              progress_bar(progress, total=num_images, desc="calibration", unit="img") as bar):
            for batch in batches:
                if seen >= num_images:
                    break
                x = _batch_tensor(batch)[: num_images - seen].to(device=device, dtype=torch.float32)
                module(x)
                col.end_batch()
                col.batch_index += 1
                seen += x.shape[0]
                bar.update(x.shape[0])
    finally:
        module.train(was_training)
    if means is not None:
        means.update(col.channel_means())
    if seen == 0:
        raise ValueError("no calibration images: the batches iterable yielded nothing; pass an iterable of "
                         f"(N, C, H, W) float32 batches with {num_images} images in all")
    return col.hists, seen, unmapped


def calibrate(module, batches, onnx_model, method: str = "entropy", num_images: int = 512,
              cache_path=None, cache_key: dict | None = None, percentile: float = DEFAULT_PERCENTILE,
              progress: bool | None = None) -> CalibrationResult:
    """An amax for every tensor the Q/DQ encodings need, and every method's amax as candidates.

    module: the torch module that was exported (same wrapping, so names match the ONNX model).
    onnx_model: ModelProto or path of the fp32 ONNX export. cache_key: everything the amax values
    depend on (weights hash, cut, input size, preprocessing, image list hash); the method and
    num_images are added. A cache whose key differs is not used (a warning says why).
    """
    check_method(method)
    key = dict(cache_key or {}, method=method, num_images=num_images,
               **({"percentile": percentile} if method == "percentile" else {}))
    if cache_path is not None:
        cached = load_cache(cache_path, key)
        if cached is not None:
            return cached
    if not isinstance(onnx_model, onnx.ModelProto):
        onnx_model = onnx.load(str(onnx_model), load_external_data=False)
    t0 = time.perf_counter()
    means: dict[str, list[float]] = {}
    hists, seen, _ = collect_histograms(module, batches, onnx_model, num_images, progress=progress, means=means)
    candidates = candidate_amax(hists, percentile)
    chosen = method if method != "percentile" else f"percentile{percentile:g}"
    result = CalibrationResult(
        amax={t: floor_amax(c[chosen]) for t, c in candidates.items()},
        nonneg={t: bool(h.nonneg) for t, h in hists.items()},
        max_abs={t: float(h.max_abs) for t, h in hists.items()},
        method=method, num_images=seen, n_tensors=len(hists), seconds=time.perf_counter() - t0, key=key,
        channel_mean=means, candidates=candidates)
    if cache_path is not None:
        save_cache(Path(cache_path), result, key)
    return result
