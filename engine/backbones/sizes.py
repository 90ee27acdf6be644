"""Input sizes a cut accepts, from shapes on the meta device (no weights, no compute): the map
at the cut must stay >= 1x1 (the smallest size), and a forward pass's activations must fit in this
machine's memory (the largest), both checked before any weights load or export starts.
"""
from __future__ import annotations

import functools

from engine.backbones.cuts import apply_cut, feature_extractor, resolve_cut
from engine.backbones.registry import BackboneError, model_info


@functools.lru_cache(maxsize=4)
def _meta_extractor(model: str):
    """The model's feature extractor on the meta device. Cached: a build asks for shapes several
    times, and assembling a meta DenseNet takes seconds."""
    import torch
    import torchvision

    with torch.device("meta"):
        return feature_extractor(getattr(torchvision.models, model)(weights=None), model_info(model).family)


def _meta_cut(model: str, cut: str | None):
    """(the cut's nn.Sequential on the meta device, resolved Cut): shapes without weights or compute."""
    info = model_info(model)
    ext = _meta_extractor(model)
    resolved = resolve_cut(info.default_cut if cut is None else cut, ext, info.family, model)
    return apply_cut(ext, resolved).eval(), resolved


def _meta_shape(module, input_size: int) -> tuple | None:
    """(C, H, W) of `module` (on the meta device) at `input_size`, or None where a layer's map
    shrinks below 1x1 (torch refuses a pooling or convolution window larger than its input)."""
    import torch

    try:
        with torch.no_grad():
            out = module(torch.zeros(1, 3, input_size, input_size, device="meta"))
    except RuntimeError:
        return None
    shape = tuple(int(d) for d in out.shape[1:])
    return shape if min(shape) >= 1 else None


def smallest_input_size(model: str, cut: str | None, too_small: int = 0) -> int:
    """The smallest square input whose map at the cut is at least 1x1, above `too_small` (known to
    fail): doubling, then bisection on the meta device (the map grows with the input)."""
    module, _ = _meta_cut(model, cut)
    lo, hi = too_small + 1, 2 * too_small + 1
    while not _meta_shape(module, hi):
        lo, hi = hi + 1, 2 * hi
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _meta_shape(module, mid) else (mid + 1, hi)
    return lo


def cut_map_shape(model: str, cut: str | None, input_size: int = 224) -> tuple:
    """(C, H, W) of the cut's output, computed on the meta device (no weights, no compute).
    BackboneError naming the smallest valid size when the map at the cut would be < 1x1."""
    module, resolved = _meta_cut(model, cut)
    shape = _meta_shape(module, input_size)
    if shape is None:
        raise BackboneError(f"--input-size {input_size}: {model} maps it to less than 1x1 by cut "
                            f"{resolved.name}; the smallest valid size there is "
                            f"{smallest_input_size(model, resolved.name, input_size)}: pass a larger --input-size "
                            "or an earlier --cut")
    return shape


def activation_bytes(model: str, cut: str | None, input_size: int, batch: int = 1) -> int:
    """Bytes of float32 activations one forward pass of `batch` images through the cut produces:
    the input plus every leaf module's output (an upper bound of what a trace holds at once),
    counted on the meta device."""
    import torch

    module, _ = _meta_cut(model, cut)
    total = [3 * input_size * input_size]
    hooks = [m.register_forward_hook(lambda m, i, o: total.append(o.numel()))
             for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, input_size, input_size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return 4 * batch * sum(total)


def check_memory(model: str, cut: str | None, input_size: int, batch: int) -> None:
    """MemoryError before any allocation when the activations of `batch` images at `input_size`
    exceed this machine's memory (the export traces a batch of 2; torch would fail later on a
    multi-GB allocation, with a traceback)."""
    need, total = activation_bytes(model, cut, input_size, batch), _machine_memory()
    if total is not None and need > total:
        raise MemoryError(f"--input-size {input_size}: {model} cut {cut or 'default'} needs about "
                          f"{need / 2**30:.1f} GiB of activations for {batch} images, more than this machine's "
                          f"{total / 2**30:.1f} GiB of memory; pass a smaller --input-size")


def _machine_memory() -> int | None:
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.virtual_memory().total)


# The default recipe's input: 9/7 of the weights' crop, in steps of 32 (288 for ImageNet's 224): a 9 x 9
# map at the stride-32 cuts instead of 7 x 7. A frozen backbone trained on random-resized crops sees
# objects larger at training than in a center crop of the same size, so its features transfer
# better at a somewhat larger input ("FixRes", Touvron et al. 2019). Chosen by bench/bench_recipes.py
# on the clothing photos (docs/benchmarks.md); --input-size overrides it.
DEFAULT_INPUT_SCALE = 9 / 7


def default_input_size(crop_size: int) -> int:
    """The default input size for weights whose preprocessing crops `crop_size` (224 -> 288)."""
    return max(32, 32 * round(crop_size * DEFAULT_INPUT_SCALE / 32))
