"""TensorRT's text calibration cache (IInt8EntropyCalibrator2's readCalibrationCache format).

    TRT-<version>-EntropyCalibration2
    <tensor name>: <IEEE-754 bits of the float32 scale as 8 hex digits, most significant first>

The scale is amax / 127. <version> is TensorRT's getVersion() integer (8601 = 8.6.1). Only
older, implicitly quantized TensorRT builds read this file; TensorRT 10/11 strongly typed networks
take their scales from the Q/DQ ONNX instead.
"""
from __future__ import annotations

import struct
from pathlib import Path

from kernels.io import atomic_write_text

DEFAULT_TRT_VERSION = 8601
ALGORITHM = "EntropyCalibration2"


def float_to_hex(x: float) -> str:
    return struct.pack(">f", x).hex()


def hex_to_float(s: str) -> float:
    return struct.unpack(">f", bytes.fromhex(s.strip().rjust(8, "0")))[0]


def format_trt_cache(scales: dict[str, float], trt_version: int = DEFAULT_TRT_VERSION) -> str:
    lines = [f"TRT-{trt_version}-{ALGORITHM}"]
    lines += [f"{name}: {float_to_hex(scale)}" for name, scale in scales.items()]
    return "\n".join(lines) + "\n"


def write_trt_cache(path, scales: dict[str, float], trt_version: int = DEFAULT_TRT_VERSION) -> Path:
    """scales: tensor name -> amax / 127. Written atomically."""
    return atomic_write_text(path, format_trt_cache(scales, trt_version))


def parse_trt_cache(text: str) -> tuple[int, str, dict[str, float]]:
    """(version, algorithm, {tensor name: scale}) from the text of a cache."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("TRT-"):
        got = lines[0][:60] if lines else "an empty file"
        raise ValueError(f"not a TensorRT calibration cache: first line is {got!r}, "
                         f"expected 'TRT-<version>-{ALGORITHM}'")
    _, version, algorithm = lines[0].split("-", 2)
    scales = {}
    for ln in lines[1:]:
        name, _, hexbits = ln.rpartition(":")
        if not name:
            raise ValueError(f"bad calibration cache line {ln!r}: expected '<tensor>: <8 hex digits>'")
        scales[name] = hex_to_float(hexbits)
    return int(version), algorithm, scales


def read_trt_cache(path) -> tuple[int, str, dict[str, float]]:
    return parse_trt_cache(Path(path).read_text())
