"""Collect activation histograms with hooks on the torch module the ONNX model was exported from,
and the top-level `calibrate()`.

Mapping ONNX tensors to torch tensors (the dynamo exporter keeps parameter names and records each
node's module path in the node metadata "pkg.torch.onnx.name_scopes"):

1. input 0 of a Conv/Gemm/MatMul whose weight initializer is "<module>.weight"
   -> the input of <module> (forward pre-hook); the k-th ONNX node using that weight is call k.
2. input 0 of a node whose leaf module runs it (a BatchNorm's input) -> that module's input.
3. a graph input -> the input of the whole module.
4. otherwise the output of the node's leaf module (forward hook), e.g. a Relu node -> the ReLU
   module, a Conv with a folded BatchNorm -> the BatchNorm module; the k-th ONNX node under that
   module is call k (checked against the number of calls per forward; a mismatch drops the tensor).

Hooks run on the module's device: |x|, min and max are reduced there and only the 2048 counts
come back to the CPU, so calibration runs on the GPU when the module is on one.
"""
from __future__ import annotations

import ast
import logging
import math
import sys
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from calibration.entropy import DEFAULT_PERCENTILE, candidate_thresholds, check_method
from calibration.histogram import NUM_BINS, TensorHistogram
from calibration.qdq import _Graph, calibration_tensors
from calibration.scales import CalibrationResult, floor_threshold, load_cache, save_cache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Probe:
    module: str  # name in module.named_modules() ("" = the whole module)
    kind: str  # "input" | "output"
    call: int  # which call of the module within one forward


def _leaf_scope(node) -> str | None:
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                return None
            return scopes[-2] if len(scopes) >= 2 else None
    return None


def map_tensors(onnx_model: onnx.ModelProto, module, tensors) -> tuple[dict[str, Probe], list[str]]:
    """(tensor -> Probe, unmapped tensor names). See the module docstring for the rules."""
    mods = dict(module.named_modules())
    # only leaf modules: a container's scope also holds inline ops (torch.cat in a DenseLayer)
    leaves = {k for k, m in mods.items() if k and not any(True for _ in m.children())}
    gr = _Graph(onnx_model)
    by_weight: dict[str, list] = defaultdict(list)
    for n in gr.weighted_nodes():
        by_weight[n.input[1]].append(n)
    by_scope: dict[str, list] = defaultdict(list)
    for n in onnx_model.graph.node:
        s = _leaf_scope(n)
        if s is not None:
            by_scope[s].append(n)
    graph_inputs = [i.name for i in onnx_model.graph.input if i.name not in gr.init]
    probes, unmapped = {}, []
    for t in tensors:
        probe = None
        for c, idx in gr.consumers.get(t, []):
            w = c.input[1] if len(c.input) > 1 else ""
            if idx == 0 and gr.weight_axis(c) is not None and w.endswith(".weight") and w[:-7] in mods:
                probe = Probe(w[:-7], "input", by_weight[w].index(c))
                break
        if probe is None:  # input 0 of a node run by a leaf module (a BN's input is a Concat's output)
            for c, idx in gr.consumers.get(t, []):
                sc = _leaf_scope(c)
                if idx == 0 and sc in leaves:
                    probe = Probe(sc, "input", by_scope[sc].index(c))
                    break
        if probe is None and t in graph_inputs[:1]:
            probe = Probe("", "input", 0)
        if probe is None and t in gr.producer:
            p = gr.producer[t]
            s = _leaf_scope(p)
            if s in leaves and p.output[0] == t:
                probe = Probe(s, "output", by_scope[s].index(p))
        if probe is None:
            unmapped.append(t)
        else:
            probes[t] = probe
    return probes, unmapped


class HistogramCollector:
    """Forward hooks that histogram the probed tensors; use as a context manager.

    hists: tensor name -> TensorHistogram; batch_index is set by the caller before each forward.
    """

    def __init__(self, module, probes: dict[str, Probe], expected_calls: dict[str, int], num_bins: int = NUM_BINS):
        self.module = module
        self.probes = probes
        self.expected_calls = expected_calls
        self.hists = {t: TensorHistogram(num_bins) for t in probes}
        # per-channel (dim 1) sums for the weight bias correction in calibration.qdq
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


def collect_histograms(module, batches, onnx_model, num_images: int = 512, tensors=None,
                       progress: bool | None = None, means: dict | None = None,
                       ) -> tuple[dict[str, TensorHistogram], int, list[str]]:
    """Histograms of the ONNX tensors (default: every tensor a Q/DQ encoding needs).

    batches: iterable of float32 (N, C, H, W) tensors/arrays, already normalized; stops after
    num_images. Returns (hists, images used, unmapped tensor names). When `means` is a dict, it
    receives each tensor's per-channel (dim 1) mean.
    """
    import torch

    tensors = list(tensors) if tensors is not None else calibration_tensors(onnx_model)
    probes, unmapped = map_tensors(onnx_model, module, tensors)
    if unmapped:
        log.warning("%d ONNX tensors have no torch counterpart and stay fp32: %s", len(unmapped), unmapped[:5])
    expected = defaultdict(int)
    for n in onnx_model.graph.node:
        s = _leaf_scope(n)
        if s is not None:
            expected[s] += 1
    try:
        device = next(module.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = module.training
    module.eval()
    seen = 0
    bar = None
    if progress or (progress is None and sys.stderr.isatty()):
        from tqdm import tqdm

        bar = tqdm(total=num_images, desc="calibration", unit="img")
    try:
        with HistogramCollector(module, probes, expected) as col, torch.no_grad():
            for batch in batches:
                if seen >= num_images:
                    break
                x = _batch_tensor(batch)[: num_images - seen].to(device=device, dtype=torch.float32)
                module(x)
                col.end_batch()
                col.batch_index += 1
                seen += x.shape[0]
                if bar is not None:
                    bar.update(x.shape[0])
    finally:
        module.train(was_training)
        if bar is not None:
            bar.close()
    if means is not None:
        means.update(col.channel_means())
    if seen == 0:
        raise ValueError("no calibration images: the batches iterable yielded nothing; pass an iterable of "
                         f"(N, C, H, W) float32 batches with {num_images} images in all")
    if seen < num_images:
        warnings.warn(f"calibration used {seen} images, fewer than the {num_images} asked; "
                      "thresholds may be less reliable")
    return col.hists, seen, unmapped


def calibrate(module, batches, onnx_model, method: str = "entropy", num_images: int = 512,
              cache_path=None, cache_key: dict | None = None, percentile: float = DEFAULT_PERCENTILE,
              progress: bool | None = None) -> CalibrationResult:
    """Thresholds for every tensor the Q/DQ encodings need.

    module: the torch module that was exported (same wrapping, so names match the ONNX model).
    onnx_model: ModelProto or path of the fp32 ONNX export. cache_key: everything the scales
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
    candidates = candidate_thresholds(hists, percentile)
    chosen = method if method != "percentile" else f"percentile{percentile:g}"
    thresholds = {t: c[chosen] for t, c in candidates.items()}
    result = CalibrationResult(
        thresholds={t: floor_threshold(v) for t, v in thresholds.items()},
        nonneg={t: bool(h.nonneg) for t, h in hists.items()},
        max_abs={t: float(h.max_abs) for t, h in hists.items()},
        method=method, num_images=seen, n_tensors=len(hists), seconds=time.perf_counter() - t0, key=key,
        channel_mean=means, candidates=candidates)
    if cache_path is not None:
        save_cache(Path(cache_path), result, key)
    return result
