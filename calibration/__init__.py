"""Entropy (KL) calibration for int8: histograms, amax per tensor, caches, Q/DQ ONNX.

"amax" is the calibration clip value (scale = amax/127), NVIDIA's term; "threshold" in this
project is the binarization cut of the feature encoders (kernels/encode.py), another thing.

calibration/ imports nothing from engine/; it takes torch modules, batches and ONNX models.
The pipeline, in the order the modules run:

    collect.py     calibrate(): hooks on the torch module -> histograms -> CalibrationResult
    mapping.py     which torch module call computes each ONNX tensor (where the hooks go)
    histogram.py   TensorHistogram: |x| histograms whose merge is exact
    entropy.py     amax from a histogram: EntropyCalibration2 (KL), max, percentile
    result.py      CalibrationResult and its JSON cache, keyed by what it depends on
    refine.py      refine_amax(): per tensor, the candidate amax that disturbs the features least
    placement.py   which tensors each Q/DQ encoding quantizes; Concat groups share one amax
    graph.py       Graph (lookups over an ONNX graph), batchnorm_to_conv
    scales.py      scales from amax; per-channel int8 weights
    bias.py        bias correction: the mean output shift of int8 weights
    qdq.py         quantize_model(), write_qdq_models(): the Q/DQ ONNX files of both encodings
    trtcache.py    TensorRT's legacy text calibration cache
"""
from calibration.collect import calibrate, collect_histograms
from calibration.entropy import METHODS, check_method
from calibration.placement import ENCODINGS, activation_tensors, calibration_tensors
from calibration.qdq import quantize_model, write_qdq_models
from calibration.refine import RefineReport, refine_amax
from calibration.result import CALIBRATION_VERSION, CalibrationResult, load_cache, save_cache

__all__ = [
    "calibrate", "collect_histograms", "METHODS", "check_method", "ENCODINGS", "activation_tensors",
    "calibration_tensors", "quantize_model", "write_qdq_models", "RefineReport", "refine_amax",
    "CALIBRATION_VERSION", "CalibrationResult", "load_cache", "save_cache",
]
