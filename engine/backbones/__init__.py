"""Backbones: torchvision models, their weights, the cuts a featurizer can stop at, and pooling.

    registry.py  MODELS, model_info, BackboneError
    weights.py   build_torchvision (ImageNet / random / file weights), weights_id, preprocess_for
    cuts.py      resolve, list_cuts, cut_map_shape, build_cut (the module that gets exported)
    pooling.py   --pool none | avg | avgN
"""
from engine.backbones.cuts import (Cut, Stage, apply_cut, build_cut, cut_map_shape, feature_extractor, list_cuts,
                                   resolve, resolve_cut, stages)
from engine.backbones.pooling import DEFAULT_POOL, POOL_HELP, check_pool, default_pool, pool_grid, pooled_features
from engine.backbones.registry import MODELS, BackboneError, BackboneInfo, model_info
from engine.backbones.weights import (build_torchvision, check_weights_spec, preprocess_for, torch_home_checkpoints,
                                      weights_enum, weights_id)

__all__ = [
    "MODELS", "BackboneError", "BackboneInfo", "model_info",
    "build_torchvision", "check_weights_spec", "preprocess_for", "torch_home_checkpoints", "weights_enum",
    "weights_id",
    "Cut", "Stage", "apply_cut", "build_cut", "cut_map_shape", "feature_extractor", "list_cuts", "resolve",
    "resolve_cut", "stages",
    "DEFAULT_POOL", "POOL_HELP", "check_pool", "default_pool", "pool_grid", "pooled_features",
]
