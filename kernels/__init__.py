"""Array numerics of the training path, written once for NumPy and CuPy.

kernels/ is the bottom layer: it imports nothing from engine/ or calibration/.
"""
