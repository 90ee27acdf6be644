"""Bias correction: the mean output shift that rounding a Conv/Gemm weight to int8 causes, which
the node's bias then absorbs (calibration.qdq applies it in both encodings)."""
from __future__ import annotations

import numpy as np


def weight_error_shift(node, w, wq, ws, axis: int, mean: np.ndarray) -> np.ndarray | None:
    """The mean output error that int8 rounding of a Conv/Gemm weight adds, per output channel:
    (W_q - W) applied to the input's per-channel mean (float64), or None when the mean does not
    fit the weight (another layout).

    w: float32 weight; wq: its int8 rounding and ws its float32 per-channel scales along `axis`
    (calibration.scales.quantize_weights); mean: (input channels,) float64. Subtracting the result
    from the bias is the bias correction of Nagel et al., "Data-Free Quantization" (2019), with the
    mean measured during calibration instead of derived from BatchNorm. Zero-padded borders see a
    smaller input mean; the correction treats every position as interior.
    """
    shape = [1] * w.ndim
    shape[axis] = -1
    d = (wq.astype(np.float64) * ws.reshape(shape).astype(np.float64)) - w.astype(np.float64)
    if node.op_type == "Conv":
        groups = next((a.i for a in node.attribute if a.name == "group"), 1)
        o, i_per_g = d.shape[0], d.shape[1]
        if mean.size != i_per_g * groups or o % groups:
            return None
        dsum = d.reshape(groups, o // groups, i_per_g, -1).sum(axis=3)
        return np.einsum("goi,gi->go", dsum, mean.reshape(groups, i_per_g)).reshape(o)
    attrs = {a.name: a.i for a in node.attribute}
    if attrs.get("transA", 0) or d.ndim != 2:
        return None
    d = d if attrs.get("transB", 0) else d.T  # (out, in)
    return d @ mean if mean.size == d.shape[1] else None
