"""Backbones: torchvision models, their weights, the cuts a featurizer can stop at, and pooling.

    registry.py  MODELS, model_info, BackboneError
    weights.py   build_torchvision (ImageNet / random / file weights), weights_id, preprocess_for
    cuts.py      resolve, list_cuts, build_cut (the module that gets exported)
    sizes.py     cut_map_shape, smallest_input_size, activation_bytes, check_memory (meta device),
                 default_input_size (the default recipe's 288 for a 224 crop)
    pooling.py   --pool none | avg | avgN
"""
from engine.backbones.cuts import (Cut, Stage, apply_cut, build_cut, feature_extractor, list_cuts, resolve,
                                   resolve_cut, stages)
from engine.backbones.pooling import DEFAULT_POOL, POOL_HELP, check_pool, default_pool, pool_grid, pooled_features
from engine.backbones.registry import MODELS, BackboneError, BackboneInfo, model_info
from engine.backbones.sizes import (activation_bytes, check_memory, cut_map_shape, default_input_size,
                                    smallest_input_size)
from engine.backbones.weights import (build_torchvision, check_weights_spec, preprocess_for, torch_home_checkpoints,
                                      weights_enum, weights_id)

__all__ = [
    "MODELS", "BackboneError", "BackboneInfo", "model_info",
    "build_torchvision", "check_weights_spec", "preprocess_for", "torch_home_checkpoints", "weights_enum",
    "weights_id",
    "Cut", "Stage", "apply_cut", "build_cut", "feature_extractor", "list_cuts", "resolve",
    "resolve_cut", "stages",
    "activation_bytes", "check_memory", "cut_map_shape", "default_input_size", "smallest_input_size",
    "DEFAULT_POOL", "POOL_HELP", "check_pool", "default_pool", "pool_grid", "pooled_features",
]
