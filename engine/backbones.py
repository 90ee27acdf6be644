"""Backbone registry: torchvision models, their weights, and the cuts a featurizer can stop at.

A cut is named after a stage of the model's convolutional feature extractor, optionally followed by
`.L`, the number of sub-layers of that stage that are kept:

    densenet169  denseblock4.12   features[:10] + the first 12 dense layers of denseblock4
    resnet50     layer3.2         conv1 .. layer2, then layer3's first 2 bottlenecks
    mobilenet_v2 features.17      features[:18]

For DenseNets this is the reference code's (block, layer) pair with readable names: block indexes
`features`, layer counts the dense layers kept. `B.L` with two integers is accepted as that pair.
"""
from __future__ import annotations

import copy
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from kernels.io import sha256_file


class BackboneError(ValueError):
    """A model, cut or weights request that cannot be honoured."""


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


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    family: str
    default_cut: str | None  # None: the whole feature extractor


MODELS: dict[str, BackboneInfo] = {
    "densenet121": BackboneInfo("densenet121", "densenet", None),
    "densenet161": BackboneInfo("densenet161", "densenet", None),
    "densenet169": BackboneInfo("densenet169", "densenet", "denseblock4.12"),
    "densenet201": BackboneInfo("densenet201", "densenet", None),
    "mobilenet_v2": BackboneInfo("mobilenet_v2", "sequential", None),
    "vgg16": BackboneInfo("vgg16", "sequential", None),
    "resnet18": BackboneInfo("resnet18", "resnet", None),
    "resnet50": BackboneInfo("resnet50", "resnet", None),
}
_RESNET_STAGES = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def model_info(name: str) -> BackboneInfo:
    if name not in MODELS:
        raise BackboneError(
            f"unknown model {name!r}; expected one of {', '.join(MODELS)}. "
            "DenseNets are the primary backbones; the others are extras."
        )
    return MODELS[name]


def feature_extractor(model, family: str):
    """The convolutional part of a torchvision classifier, as an nn.Sequential of named stages."""
    import torch

    if family in ("densenet", "sequential"):
        return model.features
    if family == "resnet":
        return torch.nn.Sequential(
            __import__("collections").OrderedDict((n, getattr(model, n)) for n in _RESNET_STAGES)
        )
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
    return torch.nn.Sequential(__import__("collections").OrderedDict(children))


def list_cuts(model: str, input_size: int = 224, pool: str | None = "none") -> list[dict]:
    """Every valid cut of `model` with its output shape (C, H, W) and feature count after `pool`
    (None: the default pooling of each cut; count None where the map is too small), in order."""
    import torch

    info = model_info(model)
    if pool is not None:
        pool_grid(pool)  # a bad spec fails here, not as a column of None
    net = build_torchvision(model, None)
    ext = feature_extractor(net, info.family).eval()
    shapes: dict[str, tuple] = {}
    hooks = []
    for s in stages(ext, info.family):
        mod = ext[s.index]
        hooks.append(mod.register_forward_hook(lambda m, i, o, s=s: shapes.__setitem__(s.name, tuple(o.shape[1:]))))
        if s.n_sublayers:
            dense = info.family == "densenet"
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


# ----------------------------------------------------------------------------- weights


def weights_enum(model: str):
    import torchvision

    return torchvision.models.get_model_weights(model).IMAGENET1K_V1


def torch_home_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def build_torchvision(model: str, weights: str | None, seed: int = 0):
    """The full torchvision classifier with `weights`: 'imagenet', 'random' (seeded), a path, or None."""
    import torch
    import torchvision

    model_info(model)
    builder: Callable = getattr(torchvision.models, model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = builder(weights=None)
    if weights in (None, "random"):
        return net.eval()
    if weights == "imagenet":
        state = _imagenet_state_dict(model)
    else:
        state = _file_state_dict(weights, model)
    _load(net, state, model, str(weights))
    return net.eval()


def _imagenet_state_dict(model: str):
    import torch

    w = weights_enum(model)
    fname = w.url.rsplit("/", 1)[-1]
    path = torch_home_checkpoints() / fname
    if not path.exists():
        if os.environ.get("OTL_OFFLINE", "") not in ("", "0"):
            raise BackboneError(_missing_weights_msg(model, fname, path, "OTL_OFFLINE is set"))
        try:
            torch.hub.load_state_dict_from_url(w.url, progress=False, check_hash=True)
        except Exception as e:  # offline, proxy, hash mismatch: all end the same way for the user
            raise BackboneError(_missing_weights_msg(model, fname, path, f"download failed: {e}")) from e
    return torch.load(path, map_location="cpu", weights_only=True)


def _missing_weights_msg(model, fname, path, why) -> str:
    return (
        f"ImageNet weights for {model} are not cached ({why}). Expected the file {fname} at {path}. "
        f"Copy it there (or set TORCH_HOME to a folder holding hub/checkpoints/{fname}), "
        "or use --weights random / --weights PATH."
    )


def _file_state_dict(path: str, model: str):
    import torch

    p = Path(path)
    if not p.is_file():
        raise BackboneError(
            f"weights {path!r} is neither 'imagenet', 'random' nor an existing file; "
            "pass a state_dict saved with torch.save(model.state_dict(), PATH)."
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(f"weights file {p} could not be read as a torch state_dict: {e}") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"weights file {p} holds a {type(state).__name__}, expected a state_dict (dict of tensors)")
    return state


def _load(net, state: dict, model: str, source: str) -> None:
    if MODELS[model].family == "densenet":
        # Checkpoints from before torchvision 0.3 spell 'norm.1' where modules now say 'norm1'.
        pat = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
        state = {(pat.sub(r"\1\2", k) if pat.match(k) else k): v for k, v in state.items()}
    state = {k.removeprefix("module."): v for k, v in state.items()}
    result = net.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise BackboneError(
            f"weights {source} do not fit {model}: {len(missing)} missing keys (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}). The file is probably for another "
            f"architecture; pass weights saved from torchvision's {model}."
        )
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as e:  # shape mismatch
        raise BackboneError(f"weights {source} do not fit {model}: {str(e)[:400]}") from e


def weights_id(weights: str, seed: int, model: str) -> str:
    """A stable identifier of the weights, part of every cache key."""
    if weights == "random":
        return f"random:seed={seed}"
    if weights == "imagenet":
        return f"imagenet:{weights_enum(model).url.rsplit('/', 1)[-1]}"
    return f"file:{sha256_file(weights)}"


def preprocess_for(model: str, weights: str):
    """The weights' own preprocessing (torchvision presets); ImageNet's default for the others."""
    from engine.data import IMAGENET_DEFAULT, Preprocess

    if weights == "imagenet":
        return Preprocess.from_weights_transforms(weights_enum(model).transforms())
    return IMAGENET_DEFAULT


def resolve(model: str, cut: str | None) -> Cut:
    """Validate a cut name without building weights (the model is built on the meta device)."""
    import torch
    import torchvision

    info = model_info(model)
    with torch.device("meta"):
        net = getattr(torchvision.models, model)(weights=None)
    ext = feature_extractor(net, info.family)
    return resolve_cut(info.default_cut if cut is None else cut, ext, info.family, model)


def check_weights_spec(weights: str) -> None:
    if weights not in ("imagenet", "random") and not Path(weights).is_file():
        raise BackboneError(
            f"weights {weights!r} is neither 'imagenet', 'random' nor an existing file; "
            "pass a state_dict saved with torch.save(model.state_dict(), PATH)."
        )


def build_cut(model: str, cut: str | None, weights: str, seed: int = 0, pool: str = "none",
              input_size: int = 224):
    """(cut module [+ pooling] + Flatten, resolved Cut). The module is what gets exported, so the
    pooling is part of the ONNX graph and every backend and precision gets it."""
    import torch

    info = model_info(model)
    resolved = resolve(model, cut)  # fail on a bad cut before loading any weights
    grid = pool_grid(pool)
    if grid:
        check_pool(pool, model, resolved.name, cut_map_shape(model, resolved.name, input_size), input_size)
    check_weights_spec(weights)
    net = build_torchvision(model, weights, seed)
    ext = feature_extractor(net, info.family)
    layers = [apply_cut(ext, resolved)]
    if grid:
        layers.append(torch.nn.AdaptiveAvgPool2d(grid))
    return torch.nn.Sequential(*layers, torch.nn.Flatten(1)).eval(), resolved


def cut_map_shape(model: str, cut: str | None, input_size: int = 224) -> tuple:
    """(C, H, W) of the cut's output, computed on the meta device (no weights, no compute)."""
    import torch
    import torchvision

    info = model_info(model)
    with torch.device("meta"):
        net = getattr(torchvision.models, model)(weights=None)
        ext = feature_extractor(net, info.family)
        resolved = resolve_cut(info.default_cut if cut is None else cut, ext, info.family, model)
        with torch.no_grad():
            out = apply_cut(ext, resolved).eval()(torch.zeros(1, 3, input_size, input_size))
    return tuple(int(d) for d in out.shape[1:])


from engine.pooling import (DEFAULT_POOL, POOL_HELP, check_pool, default_pool, pool_grid,  # noqa: E402,F401
                            pooled_features)
