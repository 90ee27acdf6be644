"""Insert QuantizeLinear/DequantizeLinear pairs into an fp32 ONNX model: int8 Q/DQ ONNX.

Placement (NVIDIA's guidance for explicit quantization): the activation input of every Conv, Gemm
and MatMul with a constant weight, per tensor, symmetric; the weight per output channel as an int8
initializer followed by DequantizeLinear (axis = output channel). BN and ReLU stay as they are.

Two encodings of the same thresholds:

* "tensorrt": int8, zero point 0, scale = T/127 on Conv/Gemm/MatMul inputs only; biases stay fp32
  (TensorRT fuses them). int8 weight + DQ rather than Q/DQ on fp32 weights: TensorRT takes either,
  ONNX Runtime needs this form to fuse, and the file is 4x smaller.
* "onnxruntime": ONNX Runtime's CPU runs a Conv in int8 (QLinearConv) only for a complete node
  group DQ(x), DQ(w), DQ(bias int32) -> Conv [-> Relu/Clip] -> Q with x and y of the SAME type
  (qdq_selectors.cc, ConvNodeGroupSelector). So this encoding also quantizes Conv/Gemm outputs
  (after a single following Relu/Clip, which the Q then makes redundant), quantizes biases to
  int32 (scale = s_x * s_w), and uses uint8 everywhere: non-negative tensors as uint8 zero point 0,
  scale T/255; signed tensors as uint8 zero point 128, scale T/127 -- the same grid as int8 zero
  point 0, offset so that input and output types match (x86 int8 kernels are u8 x s8).
  Inference BatchNormalizations become 1x1 depthwise Convs (batchnorm_to_conv) and are quantized
  like any Conv, and a Concat with a quantized input has all inputs and its output quantized with
  one shared scale, so DenseNet's Concat -> BN -> ReLU -> Conv chain runs as QLinearConcat ->
  QLinearConv -> QLinearConv in NHWC with no fp32 op or transpose in between. Measured on 2 Sapphire
  Rapids cores, batch 32, 224x224: DenseNet-169 through denseblock3 went from 1.35x (Conv-only
  Q/DQ: fp32 BN, transposes and a DQ per Concat input ate the gain) to 2.06x fp32 speed.

Tensors feeding a Concat share one threshold (the max of the group's thresholds), so a Concat of
quantized tensors can run on integers.

Both encodings apply bias correction when the calibration recorded channel means: a Conv/Gemm bias
absorbs the mean output shift that rounding its weights to int8 causes (weight_error_shift).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibration.scales import floor_threshold, quantize_weights

log = logging.getLogger(__name__)

ENCODINGS = ("tensorrt", "onnxruntime")
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")
ACTIVATIONS = ("Relu", "Clip")
# consumers that ONNX Runtime groups with their DQ inputs: each gets its own DQ node
_NODE_UNIT_OPS = ("Conv", "Gemm", "MatMul", "Add", "Mul", "Concat")


class _Graph:
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
            if len(cons) != 1 or cons[0][0].op_type not in ("Flatten", "Reshape", "Identity", "Squeeze"):
                return False
            tensor, seen = cons[0][0].output[0], seen + 1
        return tensor in self.outputs

    def clip_max(self, tensor: str) -> float | None:
        """Upper bound of the Clip that produces `tensor` (a ReLU6), if constant."""
        p = self.producer.get(tensor)
        if p is None or p.op_type != "Clip" or len(p.input) < 3 or p.input[2] not in self.init:
            return None
        return float(numpy_helper.to_array(self.init[p.input[2]]).reshape(-1)[0])


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
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in
                 list(inferred.graph.value_info) + list(inferred.graph.input)
                 if v.type.tensor_type.HasField("shape")}
    except Exception:  # noqa: BLE001 - shape inference is a convenience here
        ranks = {}
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
    used = {t for n in g.node for t in n.input}
    keep = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return out


def activation_tensors(model: onnx.ModelProto, encoding: str = "tensorrt") -> list[str]:
    """ONNX tensor names that the given encoding quantizes (in graph order).

    "onnxruntime" is evaluated on batchnorm_to_conv(model): BN inputs are quantized too, and a
    Concat with a quantized input gets all its inputs and its output quantized (it then runs on
    uint8, all sharing one scale).
    """
    _check_encoding(encoding)
    if encoding == "onnxruntime":
        model = batchnorm_to_conv(model)
    gr = _Graph(model)
    names: list[str] = []
    for n in gr.weighted_nodes():
        names.append(n.input[0])
        if encoding == "onnxruntime":
            y = gr.effective_output(n)
            if y is not None:
                names.append(y)
    if encoding == "onnxruntime":
        changed = True
        while changed:  # Concat groups: quantized in -> every in and the out
            changed = False
            have = set(names)
            for n in gr.g.node:
                if n.op_type == "Concat" and any(t in have for t in n.input) and n.output[0] not in gr.outputs:
                    for t in list(n.input) + [n.output[0]]:
                        if t not in have and t not in gr.init:
                            names.append(t)
                            have.add(t)
                            changed = True
    return list(dict.fromkeys(names))


def calibration_tensors(model: onnx.ModelProto) -> list[str]:
    """Every tensor either encoding needs a threshold for."""
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


def shared_thresholds(model, thresholds: dict[str, float], nonneg: dict[str, bool], tensors):
    """(threshold, nonneg) per tensor after Concat groups share the max threshold (and signedness)."""
    groups = concat_groups(model, tensors)
    gthr: dict[str, float] = defaultdict(float)
    gneg: dict[str, bool] = defaultdict(lambda: True)
    for t, r in groups.items():
        gthr[r] = max(gthr[r], thresholds[t])
        gneg[r] = gneg[r] and nonneg.get(t, False)
    return {t: gthr[r] for t, r in groups.items()}, {t: gneg[r] for t, r in groups.items()}


def _qparams(encoding: str, threshold: float, nonneg: bool):
    """(scale, zero point ndarray, onnx elem type) for one activation tensor."""
    t = floor_threshold(threshold)
    if encoding == "tensorrt":
        return t / 127.0, np.array(0, np.int8), TensorProto.INT8
    if nonneg:
        return t / 255.0, np.array(0, np.uint8), TensorProto.UINT8
    return t / 127.0, np.array(128, np.uint8), TensorProto.UINT8


def weight_error_shift(node, w, wq, ws, axis: int, mean: np.ndarray) -> np.ndarray | None:
    """The mean output error that int8 rounding of a Conv/Gemm weight adds, per output channel:
    (W_q - W) applied to the input's per-channel mean (float64), or None when the mean does not
    fit the weight (another layout). Subtracting it from the bias is the bias correction of Nagel
    et al., "Data-Free Quantization" (2019), with the mean measured during calibration instead of
    derived from BatchNorm. Zero-padded borders see a smaller input mean; the correction treats
    every position as interior.
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


def quantize_model(onnx_model: onnx.ModelProto, act_thresholds: dict[str, float],
                   encoding: str = "tensorrt", nonneg: dict[str, bool] | None = None,
                   channel_mean: dict | None = None, bias_correction: bool = True) -> onnx.ModelProto:
    """A copy of onnx_model with Q/DQ inserted (see the module docstring).

    act_thresholds: ONNX tensor name -> threshold T (>= 0; scale = T/127 or T/255).
    nonneg: tensor name -> min >= 0 over calibration (only the "onnxruntime" encoding uses it).
    channel_mean: tensor name -> per-channel mean over calibration; with bias_correction, the bias
    of each Conv/Gemm whose weights are quantized absorbs the mean error of its int8 weights
    (weight_error_shift). Measured on MobileNetV2 (ImageNet weights, real photos): int8 weights
    alone moved the features by 17 % (relative L2) without it and 5.8 % with it.
    Weighted nodes whose input has no threshold stay in fp32 (logged).
    """
    _check_encoding(encoding)
    if encoding == "onnxruntime":
        model = batchnorm_to_conv(onnx_model)
    else:
        model = onnx.ModelProto()
        model.CopyFrom(onnx_model)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        raise ValueError(f"per-channel Q/DQ needs opset >= 13, the model has opset {opset}; re-export it")
    gr = _Graph(model)
    nonneg = nonneg or {}
    tensors = activation_tensors(model, encoding)
    wanted = [t for t in tensors if t in act_thresholds]
    missing = [t for t in tensors if t not in act_thresholds]
    if missing:
        log.warning("%d tensors have no threshold and stay fp32: %s", len(missing), missing[:5])
    thr, neg = shared_thresholds(model, act_thresholds, nonneg, wanted)

    new_init: list[TensorProto] = []
    qparams: dict[str, tuple] = {}
    for t in wanted:
        T = thr[t]
        cmax = gr.clip_max(t)
        if cmax is not None and encoding == "onnxruntime":
            T = min(T, cmax)  # lets ONNX Runtime drop the ReLU6 (its range then covers Q's)
        scale, zp, elem = _qparams(encoding, T, neg[t])
        s_name, z_name = f"{t}_scale", f"{t}_zero_point"
        new_init += [numpy_helper.from_array(np.array(scale, np.float32), s_name),
                     numpy_helper.from_array(zp, z_name)]
        qparams[t] = (s_name, z_name, float(np.float32(scale)))

    # weights (and int32 biases for ONNX Runtime), once per initializer
    done_w: dict[tuple, str] = {}
    wscale: dict[tuple, np.ndarray] = {}
    pre_nodes: list[onnx.NodeProto] = []
    rename: dict[tuple[int, int], str] = {}  # (id(node), input index) -> new input name
    corrected = 0
    for n in gr.weighted_nodes():
        x = n.input[0]
        if x not in qparams:
            log.info("%s %s stays fp32: input %s not quantized", n.op_type, n.name, x)
            continue
        axis = gr.weight_axis(n)
        wname = n.input[1]
        w = numpy_helper.to_array(gr.init[wname])
        wq, ws = quantize_weights(w, axis)
        if (wname, axis) not in done_w:
            base = f"{wname}_quantized"
            new_init += [numpy_helper.from_array(wq, base),
                         numpy_helper.from_array(ws, f"{base}_scale"),
                         numpy_helper.from_array(np.zeros(ws.size, np.int8), f"{base}_zero_point")]
            pre_nodes.append(helper.make_node("DequantizeLinear", [base, f"{base}_scale", f"{base}_zero_point"],
                                              [f"{base}_dq"], name=f"{base}_DequantizeLinear", axis=axis))
            done_w[(wname, axis)] = f"{base}_dq"
            wscale[(wname, axis)] = ws
        rename[(id(n), 1)] = done_w[(wname, axis)]
        has_bias = len(n.input) > 2 and n.input[2] in gr.init
        bias = numpy_helper.to_array(gr.init[n.input[2]]).astype(np.float64) if has_bias else None
        shift = None
        if bias_correction and channel_mean and x in channel_mean and n.op_type in ("Conv", "Gemm"):
            shift = weight_error_shift(n, w, wq, ws, axis, np.asarray(channel_mean[x], np.float64))
        if shift is not None:
            bias = (np.zeros(shift.size) if bias is None else np.broadcast_to(bias, shift.shape)) - shift
            corrected += 1
            if len(n.input) < 3:
                n.input.append("")
        if bias is None:
            continue
        nm = n.name or n.output[0]
        base = f"{n.input[2] or nm + '.bias'}_{nm}"
        if encoding == "onnxruntime":
            bs = (qparams[x][2] * wscale[(wname, axis)].astype(np.float64)).astype(np.float32)
            bf = np.rint(bias / bs)
            if np.abs(bf).max(initial=0) >= 2**31:
                log.warning("bias of %s overflows int32 at scale s_x*s_w and is clipped", n.name)
            bq = np.clip(bf, -(2**31), 2**31 - 1).astype(np.int32)
            base += "_quantized"
            new_init += [numpy_helper.from_array(bq, base), numpy_helper.from_array(bs, f"{base}_scale"),
                         numpy_helper.from_array(np.zeros(bq.size, np.int32), f"{base}_zero_point")]
            pre_nodes.append(helper.make_node("DequantizeLinear", [base, f"{base}_scale", f"{base}_zero_point"],
                                              [f"{base}_dq"], name=f"{base}_DequantizeLinear", axis=0))
            rename[(id(n), 2)] = f"{base}_dq"
        elif shift is not None:  # TensorRT: an fp32 bias, corrected
            new_init.append(numpy_helper.from_array(bias.astype(np.float32), base + "_corrected"))
            rename[(id(n), 2)] = base + "_corrected"
    if corrected:
        log.info("bias correction: %d weighted nodes", corrected)

    # activations: one Q after the producer, one DQ per node-unit consumer, one shared DQ for the rest
    after: dict[str, list[onnx.NodeProto]] = defaultdict(list)  # producer output -> nodes to insert
    for t in wanted:
        s_name, z_name, _ = qparams[t]
        qn = helper.make_node("QuantizeLinear", [t, s_name, z_name], [f"{t}_q"], name=f"{t}_QuantizeLinear")
        nodes = [qn]
        shared = None
        for k, (c, idx) in enumerate(gr.consumers[t]):
            if c.op_type in _NODE_UNIT_OPS:
                out = f"{t}_dq{k}"
                nodes.append(helper.make_node("DequantizeLinear", [f"{t}_q", s_name, z_name], [out],
                                              name=f"{t}_DequantizeLinear{k}"))
            else:
                if shared is None:
                    shared = f"{t}_dq"
                    nodes.append(helper.make_node("DequantizeLinear", [f"{t}_q", s_name, z_name], [shared],
                                                  name=f"{t}_DequantizeLinear"))
                out = shared
            rename[(id(c), idx)] = out
        after[t] = nodes

    graph_inputs = [i.name for i in model.graph.input]
    new_nodes = list(pre_nodes)
    for t in graph_inputs:
        new_nodes += after.get(t, [])
    for n in model.graph.node:
        new_nodes.append(n)
        for o in n.output:
            new_nodes += after.get(o, [])
    for n in model.graph.node:
        for idx in range(len(n.input)):
            if (id(n), idx) in rename:
                n.input[idx] = rename[(id(n), idx)]
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    # replaced fp32 weights/biases are dropped when nothing reads them any more
    used = {t for n in model.graph.node for t in n.input} | {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep + new_init)
    model.metadata_props.append(onnx.StringStringEntryProto(key="otl.int8_encoding", value=encoding))
    return model


def _check_encoding(encoding: str) -> None:
    if encoding not in ENCODINGS:
        raise ValueError(f"unknown Q/DQ encoding {encoding!r}; valid encodings: {', '.join(ENCODINGS)}")


def write_qdq_models(onnx_model, result, out_dir, trt_version: int | None = None,
                     bias_correction: bool = True) -> dict[str, Path]:
    """Write model_int8_tensorrt.onnx, model_int8_onnxruntime.onnx and calibration.trtcache
    (all atomic) from a CalibrationResult. onnx_model: ModelProto or path.
    Returns {"tensorrt": path, "onnxruntime": path, "trt_cache": path}."""
    from calibration.scales import act_scale
    from calibration.trtcache import DEFAULT_TRT_VERSION, write_trt_cache
    from kernels.io import atomic_write_bytes

    if not isinstance(onnx_model, onnx.ModelProto):
        onnx_model = onnx.load(str(onnx_model))
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    for enc in ENCODINGS:
        q = quantize_model(onnx_model, result.thresholds, enc, result.nonneg, result.channel_mean, bias_correction)
        paths[enc] = atomic_write_bytes(out_dir / f"model_int8_{enc}.onnx", q.SerializeToString())
    trt_tensors = [t for t in activation_tensors(onnx_model, "tensorrt") if t in result.thresholds]
    thr, _ = shared_thresholds(onnx_model, result.thresholds, result.nonneg, trt_tensors)
    paths["trt_cache"] = write_trt_cache(out_dir / "calibration.trtcache",
                                         {t: act_scale(thr[t]) for t in trt_tensors},
                                         trt_version or DEFAULT_TRT_VERSION)
    return paths
