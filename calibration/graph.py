"""The ONNX graph as calibration reads it (Graph: producers, consumers, constant weights), and the
one rewrite it makes before quantizing (batchnorm_to_conv)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
ACTIVATIONS = ("Relu", "Clip")
# ops that pass a value through unchanged in content: a tensor they turn into a graph output is a feature
_SHAPE_OPS = ("Flatten", "Reshape", "Identity", "Squeeze")


class Graph:
    """Lookups over one ModelProto's graph (built once; the model must not change under it).

    init: initializer name -> TensorProto; producer: tensor -> node; consumers: tensor ->
    [(node, input index)]; outputs: the graph output names.
    """

    def __init__(self, model: onnx.ModelProto):
        g = model.graph
        self.g = g
        self.init = {i.name: i for i in g.initializer}
        self.producer = {o: n for n in g.node for o in n.output}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        for n in g.node:
            for k, t in enumerate(n.input):
                if t:
                    self.consumers[t].append((n, k))
        self.outputs = {o.name for o in g.output}

    def weight_axis(self, node) -> int | None:
        """Output-channel axis of the node's constant weight, or None when it has none."""
        if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in self.init:
            return None
        ndim = len(self.init[node.input[1]].dims)
        if node.op_type == "Conv":
            return 0
        if node.op_type == "Gemm":
            trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
            return 0 if trans_b else 1
        return 1 if ndim == 2 else None  # MatMul: (K, N)

    def weighted_nodes(self):
        return [n for n in self.g.node if self.weight_axis(n) is not None]

    def effective_output(self, node) -> str | None:
        """Where to quantize a weighted node's output: after a lone Relu/Clip, never a graph output."""
        y = node.output[0]
        cons = self.consumers.get(y, [])
        if len(cons) == 1 and cons[0][0].op_type in ACTIVATIONS and y not in self.outputs:
            y = cons[0][0].output[0]
        return None if self.reaches_output(y) or not self.consumers.get(y) else y

    def reaches_output(self, tensor: str) -> bool:
        """True when `tensor` is a graph output or becomes one through shape-only ops (the
        engine's Flatten): those values are the features, so they stay at full precision."""
        seen = 0
        while tensor not in self.outputs and seen < 8:
            cons = self.consumers.get(tensor, [])
            if len(cons) != 1 or cons[0][0].op_type not in _SHAPE_OPS:
                return False
            tensor, seen = cons[0][0].output[0], seen + 1
        return tensor in self.outputs

    def clip_max(self, tensor: str) -> float | None:
        """Upper bound of the Clip that produces `tensor` (a ReLU6), if constant."""
        p = self.producer.get(tensor)
        if p is None or p.op_type != "Clip" or len(p.input) < 3 or p.input[2] not in self.init:
            return None
        return float(numpy_helper.to_array(self.init[p.input[2]]).reshape(-1)[0])


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor name -> rank, from ONNX shape inference ({} when it fails)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shape inference is a convenience here
        return {}
    return {v.name: len(v.type.tensor_type.shape.dim) for v in
            list(inferred.graph.value_info) + list(inferred.graph.input)
            if v.type.tensor_type.HasField("shape")}


def batchnorm_to_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy where each inference BatchNormalization on a 4-D tensor is the same per-channel affine
    map written as a 1x1 depthwise Conv (W = gamma / sqrt(var + eps), B = beta - mean * W).

    Not a fold into a neighbouring conv: the BN stays its own node, so ONNX Runtime can run it as
    an int8 QLinearConv in NHWC between two quantized tensors (DenseNet's pre-activation BN -> ReLU
    would otherwise run in fp32 NCHW with transposes around it).
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if not any(n.op_type == "BatchNormalization" for n in model.graph.node):
        return out  # nothing to rewrite: skip the shape inference (most of this function's time)
    g = out.graph
    init = {i.name: i for i in g.initializer}
    ranks = _ranks(model)
    nodes = []
    for n in g.node:
        if (n.op_type != "BatchNormalization" or len(n.output) != 1 or ranks.get(n.input[0]) != 4
                or not all(t in init for t in n.input[1:5])):
            nodes.append(n)
            continue
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        gamma, beta, mean, var = (numpy_helper.to_array(init[t]).astype(np.float64) for t in n.input[1:5])
        a = gamma / np.sqrt(var + eps)
        b = beta - mean * a
        base = (n.name or n.output[0]) + "_as_conv"
        g.initializer.extend([numpy_helper.from_array(a.reshape(-1, 1, 1, 1).astype(np.float32), f"{base}.weight"),
                              numpy_helper.from_array(b.astype(np.float32), f"{base}.bias")])
        conv = helper.make_node("Conv", [n.input[0], f"{base}.weight", f"{base}.bias"], list(n.output),
                                name=base, group=int(a.size), kernel_shape=[1, 1])
        conv.metadata_props.extend(n.metadata_props)
        nodes.append(conv)
    del g.node[:]
    g.node.extend(nodes)
    drop_unused_initializers(out)
    return out


def drop_unused_initializers(model: onnx.ModelProto, extra=()) -> None:
    """Remove (in place) the initializers no node reads, keeping graph outputs; then append `extra`."""
    g = model.graph
    used = {t for n in g.node for t in n.input} | {o.name for o in g.output}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep + list(extra))
