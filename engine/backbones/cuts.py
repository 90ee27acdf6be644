"""Cuts: where a featurizer stops inside a backbone's convolutional feature extractor.

A cut is named after a stage of the feature extractor, optionally followed by `.L`, the number of
sub-layers of that stage that are kept:

    densenet169  denseblock4.12   features[:10] + the first 12 dense layers of denseblock4
    resnet50     layer3.2         conv1 .. layer2, then layer3's first 2 bottlenecks
    mobilenet_v2 features.17      features[:18]

For DenseNets this is the reference code's (block, layer) pair with readable names: block indexes
`features`, layer counts the dense layers kept. `B.L` with two integers is accepted as that pair.
build_cut assembles what gets exported: the cut, the pooling and a Flatten.
"""
from __future__ import annotations

import copy
import re
from collections import OrderedDict
from dataclasses import dataclass

from engine.backbones.pooling import check_pool, default_pool, pool_grid, pooled_features
from engine.backbones.registry import BackboneError, model_info
from engine.backbones.weights import build_torchvision, check_weights_spec

_RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


@dataclass(frozen=True)
class Stage:
    """One child of the feature extractor, with the number of sub-layers it can be cut inside."""

    name: str
    index: int
    n_sublayers: int  # 0: the stage is atomic


@dataclass(frozen=True)
class Cut:
    """A resolved cut: keep stages[:index] fully, then `layers` sub-layers of stages[index]."""

    name: str
    index: int
    layers: int  # 0: the whole stage


def feature_extractor(model, family: str):
    """The convolutional part of a torchvision classifier, as an nn.Sequential of named stages."""
    import torch

    if family in ("densenet", "sequential"):
        return model.features
    if family == "resnet":
        return torch.nn.Sequential(OrderedDict((n, getattr(model, n)) for n in _RESNET_STAGES))
    raise AssertionError(family)


def _stage_name(family: str, child_name: str) -> str:
    # Sequential backbones number their children; a bare number would read as a reference-style pair.
    return f"features.{child_name}" if family == "sequential" else child_name


def _n_sublayers(module, family: str) -> int:
    """Dense blocks (DenseNet) and residual stages (ResNet) can be cut inside; the rest is atomic,
    as in the reference (a DenseNet transition counts as one layer)."""
    if family == "densenet":
        from torchvision.models.densenet import _DenseBlock

        return len(module) if isinstance(module, _DenseBlock) else 0
    if family == "resnet":
        import torch

        return len(module) if isinstance(module, torch.nn.Sequential) else 0
    return 0


def stages(extractor, family: str) -> list[Stage]:
    return [
        Stage(_stage_name(family, n), i, _n_sublayers(m, family))
        for i, (n, m) in enumerate(extractor.named_children())
    ]


def resolve_cut(name: str | None, extractor, family: str, model: str) -> Cut:
    """Parse a cut name (or the reference's `block.layer` pair) against the extractor's stages."""
    all_stages = stages(extractor, family)
    if name is None or name in ("features", "full"):
        last = all_stages[-1]
        return Cut("features", last.index, 0)
    by_name = {s.name: s for s in all_stages}
    m = re.fullmatch(r"(\d+)\.(\d+)", name)
    if m and family == "densenet":  # reference semantics: features[block], `layer` dense layers kept
        block, layer = int(m.group(1)), int(m.group(2))
        if block >= len(all_stages):
            raise BackboneError(f"cut {name!r}: block {block} is past the last block ({len(all_stages) - 1}) of {model}")
        s = all_stages[block]
        name = s.name if (layer == 0 or s.n_sublayers == 0) else f"{s.name}.{layer}"
    stage_name, _, layers = name.partition(".") if family != "sequential" else (name, "", "")
    if stage_name in by_name:
        s = by_name[stage_name]
        n = int(layers) if layers.isdigit() else (0 if layers == "" else -1)
        if n == s.n_sublayers:
            n = 0
        if 0 <= n <= s.n_sublayers and not (n and s.n_sublayers == 0):
            return Cut(name if n else s.name, s.index, n)
    valid = ", ".join(c for c, _ in _cut_names(all_stages)[:12])
    raise BackboneError(
        f"unknown cut {name!r} for {model}; valid cuts look like: {valid}, ... "
        f"Run `otl cuts {model}` for the full list with output shapes."
    )


def _cut_names(all_stages: list[Stage]) -> list[tuple[str, Cut]]:
    out = []
    for s in all_stages:
        for n in range(1, s.n_sublayers):
            out.append((f"{s.name}.{n}", Cut(f"{s.name}.{n}", s.index, n)))
        out.append((s.name, Cut(s.name, s.index, 0)))
    return out


def apply_cut(extractor, cut: Cut):
    """A new nn.Sequential holding the stages up to the cut (modules shared, the cut stage copied)."""
    import torch

    children = list(extractor.named_children())[: cut.index + 1]
    if cut.layers:
        name, last = children[-1]
        last = copy.copy(last)  # shallow: the kept sub-layers keep their parameters
        last._modules = type(last._modules)(list(last._modules.items())[: cut.layers])
        children[-1] = (name, last)
    return torch.nn.Sequential(OrderedDict(children))


def _cut_shapes(ext, family: str, input_size: int) -> dict[str, tuple]:
    """{cut name: (C, H, W)} for every stage and sub-layer, from one forward pass with hooks."""
    import torch

    shapes: dict[str, tuple] = {}
    hooks = []
    for s in stages(ext, family):
        mod = ext[s.index]
        hooks.append(mod.register_forward_hook(lambda m, i, o, s=s: shapes.__setitem__(s.name, tuple(o.shape[1:]))))
        if not s.n_sublayers:
            continue
        dense = family == "densenet"
        if dense:  # a dense layer adds its growth channels to everything before it
            hooks.append(mod.register_forward_pre_hook(
                lambda m, i, s=s: shapes.__setitem__(f"{s.name}.0", tuple(i[0].shape[1:]))))
        for j, sub in enumerate(mod.children(), start=1):
            def hook(m, i, o, s=s, j=j, dense=dense):
                if dense:
                    prev = shapes[f"{s.name}.{j - 1}"]
                    shapes[f"{s.name}.{j}"] = (prev[0] + o.shape[1],) + tuple(o.shape[2:])
                else:
                    shapes[f"{s.name}.{j}"] = tuple(o.shape[1:])
            hooks.append(sub.register_forward_hook(hook))
    with torch.no_grad():
        ext(torch.zeros(1, 3, input_size, input_size))
    for h in hooks:
        h.remove()
    return shapes


def list_cuts(model: str, input_size: int = 224, pool: str | None = "none") -> list[dict]:
    """Every valid cut of `model` with its output shape (C, H, W) and feature count after `pool`
    (None: the default pooling of each cut; count None where the map is too small), in order."""
    from engine.backbones.sizes import cut_map_shape

    info = model_info(model)
    if pool is not None:
        pool_grid(pool)  # a bad spec fails here, not as a column of None
    cut_map_shape(model, "features", input_size)  # the last stage has the smallest map: < 1x1 fails here
    ext = feature_extractor(build_torchvision(model, None), info.family).eval()
    shapes = _cut_shapes(ext, info.family, input_size)
    rows = []
    default = resolve_cut(info.default_cut, ext, info.family, model).name
    for name, _ in _cut_names(stages(ext, info.family)):
        shape = shapes[name]
        p = default_pool(shape) if pool is None else pool
        try:
            check_pool(p, model, name, shape, input_size)
            n = pooled_features(shape, p)
        except BackboneError:
            n = None
        rows.append({"cut": name, "shape": list(shape), "pool": p, "features": n, "default": name == default})
    if default == "features":
        rows[-1]["default"] = True
    return rows


def resolve(model: str, cut: str | None) -> Cut:
    """Validate a cut name without building weights (the model is built on the meta device)."""
    import torch
    import torchvision

    info = model_info(model)
    with torch.device("meta"):
        net = getattr(torchvision.models, model)(weights=None)
    ext = feature_extractor(net, info.family)
    return resolve_cut(info.default_cut if cut is None else cut, ext, info.family, model)


def build_cut(model: str, cut: str | None, weights: str, seed: int = 0, pool: str = "none",
              input_size: int = 224):
    """(cut module [+ pooling] + Flatten, resolved Cut). The module is what gets exported, so the
    pooling is part of the ONNX graph and every backend and precision gets it."""
    import torch

    info = model_info(model)
    resolved = resolve(model, cut)  # fail on a bad cut, a too small or too large input before loading any weights
    from engine.backbones.sizes import check_memory, cut_map_shape
    from engine.export import EXPORT_BATCH

    shape = cut_map_shape(model, resolved.name, input_size)
    check_memory(model, resolved.name, input_size, EXPORT_BATCH)
    grid = pool_grid(pool)
    if grid:
        check_pool(pool, model, resolved.name, shape, input_size)
    check_weights_spec(weights)
    ext = feature_extractor(build_torchvision(model, weights, seed), info.family)
    layers = [apply_cut(ext, resolved)]
    if grid:
        layers.append(torch.nn.AdaptiveAvgPool2d(grid))
    return torch.nn.Sequential(*layers, torch.nn.Flatten(1)).eval(), resolved
