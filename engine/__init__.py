"""otl engine: backbones, export, precisions, runners, featurization, training and reports.

engine/ orchestrates; it uses calibration/ (int8 scales) and kernels/ (array numerics).
"""
__version__ = "0.1.0"
