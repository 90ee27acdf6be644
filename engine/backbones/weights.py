"""Weights: a torchvision classifier built with ImageNet, seeded random or file weights.

    build_torchvision(model, weights, seed)  weights: "imagenet" | "random" | a state_dict file | None
    weights_id(...)                          the stable identifier that goes into every cache key
    preprocess_for(model, weights)           the weights' own preprocessing

ImageNet weights are read from torch's hub cache (TORCH_HOME/hub/checkpoints) and downloaded there
only when OTL_OFFLINE is unset.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from engine.backbones.registry import MODELS, BackboneError, model_info
from engine.data import IMAGENET_DEFAULT, Preprocess
from kernels.io import sha256_file


def weights_enum(model: str):
    import torchvision

    return torchvision.models.get_model_weights(model).IMAGENET1K_V1


def torch_home_checkpoints() -> Path:
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def check_weights_spec(weights: str) -> None:
    """'imagenet', 'random' or an existing file; anything else raises BackboneError."""
    if weights not in ("imagenet", "random") and not Path(weights).is_file():
        what = "a directory" if Path(weights).is_dir() else "neither 'imagenet', 'random' nor an existing file"
        raise BackboneError(f"weights {weights!r} is {what}; pass imagenet, random or a .pth state dict saved "
                            "with torch.save(model.state_dict(), PATH).")


def build_torchvision(model: str, weights: str | None, seed: int = 0):
    """The full torchvision classifier with `weights`: 'imagenet', 'random' (seeded), a path, or None."""
    import torch
    import torchvision

    model_info(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = getattr(torchvision.models, model)(weights=None)
    if weights in (None, "random"):
        return net.eval()
    if weights == "imagenet":
        state = _imagenet_state_dict(model)
    else:
        state = _file_state_dict(weights)
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


def _file_state_dict(path: str):
    import torch

    check_weights_spec(path)
    p = Path(path)
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise BackboneError(f"{p} is not a torch checkpoint ({_why_unloadable(p, e)}); pass a .pth state dict "
                            "saved by torch.save(model.state_dict(), PATH)") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise BackboneError(f"weights file {p} holds a {type(state).__name__}, expected a state_dict (dict of tensors)")
    return state


def _why_unloadable(p: Path, e: Exception) -> str:
    """torch.load's failure in words: what the file is instead, not torch's "101" or its advice to
    load with weights_only=False (which would run the file's code)."""
    from engine.checks import file_kind

    kind = file_kind(p)
    if kind in ("a zip archive", "a damaged zip archive", "a pickle"):
        if "weights_only" in str(e) or "Weights only" in str(e):
            return f"{kind} holding Python objects besides tensors, e.g. a whole pickled model"
        return f"{kind} torch cannot read: {' '.join(str(e).split())[:120]}"
    return kind


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


def preprocess_for(model: str, weights: str) -> Preprocess:
    """The weights' own preprocessing (torchvision presets); ImageNet's default for the others."""
    if weights == "imagenet":
        return Preprocess.from_weights_transforms(weights_enum(model).transforms())
    return IMAGENET_DEFAULT
