"""The backbones otl knows: torchvision classifiers, each with its family and default cut.

The family says how the convolutional feature extractor is found and which of its stages can be
cut inside (engine/backbones/cuts.py).
"""
from __future__ import annotations

from dataclasses import dataclass


class BackboneError(ValueError):
    """A model, cut or weights request that cannot be honoured."""


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    family: str  # "densenet" | "resnet" | "sequential" (a `features` nn.Sequential)
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


def model_info(name: str) -> BackboneInfo:
    if name not in MODELS:
        raise BackboneError(
            f"unknown model {name!r}; expected one of {', '.join(MODELS)}. "
            "DenseNets are the primary backbones; the others are extras."
        )
    return MODELS[name]
