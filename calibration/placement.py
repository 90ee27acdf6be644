"""Which activation tensors each Q/DQ encoding quantizes, and which of them share one amax.

"tensorrt": the activation input of every Conv, Gemm and MatMul with a constant weight.
"onnxruntime" (evaluated on batchnorm_to_conv(model), so BN inputs count as Conv inputs): those,
plus each weighted node's output (after a lone Relu/Clip), plus every input and the output of a
Concat that has a quantized input. Tensors meeting at a Concat share one amax (the largest of
theirs), so the Concat can run on integers.
"""
from __future__ import annotations

from collections import defaultdict

import onnx

from calibration.graph import Graph, batchnorm_to_conv

ENCODINGS = ("tensorrt", "onnxruntime")


def check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown Q/DQ encoding {encoding!r}; valid encodings: {', '.join(ENCODINGS)}")


def activation_tensors(model: onnx.ModelProto, encoding: str = "tensorrt") -> list[str]:
    """ONNX tensor names that the given encoding quantizes (in graph order; see the module docstring)."""
    check_encoding(encoding)
    if encoding == "onnxruntime":
        model = batchnorm_to_conv(model)
    gr = Graph(model)
    names: list[str] = []
    for n in gr.weighted_nodes():
        names.append(n.input[0])
        if encoding == "onnxruntime":
            y = gr.effective_output(n)
            if y is not None:
                names.append(y)
    if encoding == "onnxruntime":
        names = _close_over_concats(gr, names)
    return list(dict.fromkeys(names))


def _close_over_concats(gr: Graph, names: list[str]) -> list[str]:
    """names plus, until nothing changes, every input and the output of a Concat with a quantized input."""
    names = list(names)
    changed = True
    while changed:
        changed = False
        have = set(names)
        for n in gr.g.node:
            if n.op_type == "Concat" and any(t in have for t in n.input) and n.output[0] not in gr.outputs:
                for t in list(n.input) + [n.output[0]]:
                    if t not in have and t not in gr.init:
                        names.append(t)
                        have.add(t)
                        changed = True
    return names


def calibration_tensors(model: onnx.ModelProto) -> list[str]:
    """Every tensor either encoding needs an amax for."""
    return list(dict.fromkeys(activation_tensors(model, "tensorrt") + activation_tensors(model, "onnxruntime")))


def concat_groups(model: onnx.ModelProto, tensors) -> dict[str, str]:
    """Union-find over the quantized inputs of each Concat: tensor -> group representative."""
    tensors = set(tensors)
    parent = {t: t for t in tensors}

    def find(t):
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    for n in model.graph.node:
        if n.op_type == "Concat":
            ins = [t for t in list(n.input) + [n.output[0]] if t in tensors]
            for t in ins[1:]:
                parent[find(t)] = find(ins[0])
    return {t: find(t) for t in tensors}


def shared_amax(model, amax: dict[str, float], nonneg: dict[str, bool], tensors):
    """(amax, nonneg) per tensor of `tensors` after Concat groups share the largest amax (and are
    non-negative only when every member is)."""
    groups = concat_groups(model, tensors)
    group_amax: dict[str, float] = defaultdict(float)
    group_nonneg: dict[str, bool] = defaultdict(lambda: True)
    for t, r in groups.items():
        group_amax[r] = max(group_amax[r], amax[t])
        group_nonneg[r] = group_nonneg[r] and nonneg.get(t, False)
    return {t: group_amax[r] for t, r in groups.items()}, {t: group_nonneg[r] for t, r in groups.items()}
