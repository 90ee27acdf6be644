"""Entropy (KL) calibration for int8: histograms, thresholds, scales, caches, Q/DQ ONNX.

calibration/ imports nothing from engine/; it takes torch modules, batches and ONNX models.
"""
