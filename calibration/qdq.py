"""Insert QuantizeLinear/DequantizeLinear pairs into an fp32 ONNX model: int8 Q/DQ ONNX.

Placement (NVIDIA's guidance for explicit quantization, calibration.placement): the activation
input of every Conv, Gemm and MatMul with a constant weight, per tensor, symmetric; the weight per
output channel as an int8 initializer followed by DequantizeLinear (axis = output channel). BN and
ReLU stay as they are.

Two encodings of the same amax values:

* "tensorrt": int8, zero point 0, scale = amax/127 on Conv/Gemm/MatMul inputs only; biases stay
  fp32 (TensorRT fuses them). int8 weight + DQ rather than Q/DQ on fp32 weights: TensorRT takes
  either, ONNX Runtime needs this form to fuse, and the file is 4x smaller.
* "onnxruntime": ONNX Runtime's CPU runs a Conv in int8 (QLinearConv) only for a complete node
  group DQ(x), DQ(w), DQ(bias int32) -> Conv [-> Relu/Clip] -> Q with x and y of the SAME type
  (qdq_selectors.cc, ConvNodeGroupSelector). So this encoding also quantizes Conv/Gemm outputs
  (after a single following Relu/Clip, which the Q then makes redundant), quantizes biases to
  int32 (scale = s_x * s_w), and uses uint8 everywhere: non-negative tensors as uint8 zero point 0,
  scale amax/255; signed tensors as uint8 zero point 128, scale amax/127 -- the same grid as int8
  zero point 0, offset so that input and output types match (x86 int8 kernels are u8 x s8).
  Inference BatchNormalizations become 1x1 depthwise Convs (calibration.graph.batchnorm_to_conv)
  and are quantized like any Conv, and a Concat with a quantized input has all inputs and its
  output quantized with one shared scale, so DenseNet's Concat -> BN -> ReLU -> Conv chain runs as
  QLinearConcat -> QLinearConv -> QLinearConv in NHWC with no fp32 op or transpose in between.
  Measured on 2 Sapphire Rapids cores, batch 32, 224x224: DenseNet-169 through denseblock3 went
  from 1.35x (Conv-only Q/DQ: fp32 BN, transposes and a DQ per Concat input ate the gain) to 2.06x
  fp32 speed.

Both encodings apply bias correction when the calibration recorded channel means: a Conv/Gemm bias
absorbs the mean output shift that rounding its weights to int8 causes (calibration.bias).
"""
from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from calibration.bias import weight_error_shift
from calibration.graph import Graph, batchnorm_to_conv, drop_unused_initializers
from calibration.placement import ENCODINGS, activation_tensors, check_encoding, shared_amax
from calibration.scales import act_scale, floor_amax, quantize_weights

log = logging.getLogger(__name__)

# consumers that ONNX Runtime groups with their DQ inputs: each gets its own DQ node
_NODE_UNIT_OPS = ("Conv", "Gemm", "MatMul", "Add", "Mul", "Concat")


@dataclass
class _Edits:
    """What quantize_model adds to the graph, collected before the graph is rewritten once."""

    initializers: list = field(default_factory=list)
    weight_nodes: list = field(default_factory=list)  # DQ of weights and biases, first in the graph
    after: dict = field(default_factory=lambda: defaultdict(list))  # tensor -> nodes right after its producer
    rename: dict = field(default_factory=dict)  # (id(node), input index) -> new input name

    def constant_dq(self, base: str, values: np.ndarray, scale: np.ndarray, axis: int) -> str:
        """An initializer `base` of quantized values with per-channel scales, zero points 0 and a
        DequantizeLinear node; returns the DQ output's name."""
        self.initializers += [numpy_helper.from_array(values, base),
                              numpy_helper.from_array(scale, f"{base}_scale"),
                              numpy_helper.from_array(np.zeros(scale.size, values.dtype), f"{base}_zero_point")]
        self.weight_nodes.append(helper.make_node("DequantizeLinear", [base, f"{base}_scale", f"{base}_zero_point"],
                                                  [f"{base}_dq"], name=f"{base}_DequantizeLinear", axis=axis))
        return f"{base}_dq"


def _qparams(encoding: str, amax: float, nonneg: bool):
    """(scale, zero point ndarray, onnx elem type) for one activation tensor."""
    a = floor_amax(amax)
    if encoding == "tensorrt":
        return a / 127.0, np.array(0, np.int8), TensorProto.INT8
    if nonneg:
        return a / 255.0, np.array(0, np.uint8), TensorProto.UINT8
    return a / 127.0, np.array(128, np.uint8), TensorProto.UINT8


def quantize_model(onnx_model: onnx.ModelProto, act_amax: dict[str, float],
                   encoding: str = "tensorrt", nonneg: dict[str, bool] | None = None,
                   channel_mean: dict | None = None, bias_correction: bool = True,
                   log_missing: bool = True) -> onnx.ModelProto:
    """A copy of onnx_model with Q/DQ inserted (see the module docstring).

    act_amax: ONNX tensor name -> amax (>= 0; scale = amax/127 or amax/255).
    nonneg: tensor name -> min >= 0 over calibration (only the "onnxruntime" encoding uses it).
    channel_mean: tensor name -> per-channel mean over calibration; with bias_correction, the bias
    of each Conv/Gemm whose weights are quantized absorbs the mean error of its int8 weights
    (calibration.bias). Measured on MobileNetV2 (ImageNet weights, real photos): int8 weights
    alone moved the features by 17 % (relative L2) without it and 5.8 % with it.
    Weighted nodes whose input has no amax stay in fp32 (logged unless log_missing is False: a build
    quantizes many trial models while refining, and says it once, in write_qdq_models).
    """
    check_encoding(encoding)
    if encoding == "onnxruntime":
        model = batchnorm_to_conv(onnx_model)
    else:
        model = onnx.ModelProto()
        model.CopyFrom(onnx_model)
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        raise ValueError(f"per-channel Q/DQ needs opset >= 13, the model has opset {opset}; re-export it")
    gr = Graph(model)
    tensors = activation_tensors(model, encoding)
    wanted = [t for t in tensors if t in act_amax]
    missing = [t for t in tensors if t not in act_amax]
    if missing and log_missing:
        log.warning("%d tensors have no amax and stay fp32: %s", len(missing), missing[:5])
    amax, neg = shared_amax(model, act_amax, nonneg or {}, wanted)
    edits = _Edits()
    qparams = _activation_qparams(gr, encoding, amax, neg, wanted, edits)
    _quantize_weights_and_biases(gr, encoding, qparams, channel_mean if bias_correction else None, edits)
    _insert_activation_qdq(gr, qparams, wanted, edits)
    _rewire(model, edits)
    model.metadata_props.append(onnx.StringStringEntryProto(key="otl.int8_encoding", value=encoding))
    return model


def _activation_qparams(gr: Graph, encoding: str, amax: dict, nonneg: dict, tensors, edits: _Edits) -> dict:
    """Scale and zero-point initializers per activation tensor: {tensor: (scale name, zero point
    name, float32 scale as a float)}."""
    qparams = {}
    for t in tensors:
        a = amax[t]
        cmax = gr.clip_max(t)
        if cmax is not None and encoding == "onnxruntime":
            a = min(a, cmax)  # lets ONNX Runtime drop the ReLU6 (its range then covers Q's)
        scale, zp, _ = _qparams(encoding, a, nonneg[t])
        s_name, z_name = f"{t}_scale", f"{t}_zero_point"
        edits.initializers += [numpy_helper.from_array(np.array(scale, np.float32), s_name),
                               numpy_helper.from_array(zp, z_name)]
        qparams[t] = (s_name, z_name, float(np.float32(scale)))
    return qparams


def _quantize_weights_and_biases(gr: Graph, encoding: str, qparams: dict, channel_mean: dict | None,
                                 edits: _Edits) -> None:
    """int8 weights + DQ (once per initializer and axis) for every weighted node whose input is
    quantized; its bias bias-corrected (channel_mean given) and, for ONNX Runtime, int32."""
    done: dict[tuple, str] = {}  # (weight name, axis) -> DQ output
    corrected = 0
    for n in gr.weighted_nodes():
        x = n.input[0]
        if x not in qparams:
            log.info("%s %s stays fp32: input %s not quantized", n.op_type, n.name, x)
            continue
        axis, wname = gr.weight_axis(n), n.input[1]
        w = numpy_helper.to_array(gr.init[wname])
        wq, ws = quantize_weights(w, axis)
        if (wname, axis) not in done:
            done[(wname, axis)] = edits.constant_dq(f"{wname}_quantized", wq, ws, axis)
        edits.rename[(id(n), 1)] = done[(wname, axis)]
        has_bias = len(n.input) > 2 and n.input[2] in gr.init
        bias = numpy_helper.to_array(gr.init[n.input[2]]).astype(np.float64) if has_bias else None
        shift = None
        if channel_mean and x in channel_mean and n.op_type in ("Conv", "Gemm"):
            shift = weight_error_shift(n, w, wq, ws, axis, np.asarray(channel_mean[x], np.float64))
        if shift is not None:
            bias = (np.zeros(shift.size) if bias is None else np.broadcast_to(bias, shift.shape)) - shift
            corrected += 1
            if len(n.input) < 3:
                n.input.append("")
        if bias is not None:
            _bias(n, bias, encoding, qparams[x][2] * ws.astype(np.float64), shift is not None, edits)
    if corrected:
        log.info("bias correction: %d weighted nodes", corrected)


def _bias(node, bias: np.ndarray, encoding: str, scale: np.ndarray, corrected: bool, edits: _Edits) -> None:
    """The node's bias as ONNX Runtime's int32 + DQ (scale = s_x * s_w per channel), or for
    TensorRT a corrected fp32 bias (an uncorrected one stays as it is)."""
    nm = node.name or node.output[0]
    base = f"{node.input[2] or nm + '.bias'}_{nm}"
    if encoding == "onnxruntime":
        bs = scale.astype(np.float32)
        bf = np.rint(bias / bs)
        if np.abs(bf).max(initial=0) >= 2**31:
            log.warning("bias of %s overflows int32 at scale s_x*s_w and is clipped", node.name)
        bq = np.clip(bf, -(2**31), 2**31 - 1).astype(np.int32)
        edits.rename[(id(node), 2)] = edits.constant_dq(base + "_quantized", bq, bs, 0)
    elif corrected:
        edits.initializers.append(numpy_helper.from_array(bias.astype(np.float32), base + "_corrected"))
        edits.rename[(id(node), 2)] = base + "_corrected"


def _insert_activation_qdq(gr: Graph, qparams: dict, tensors, edits: _Edits) -> None:
    """Per tensor: one Q after its producer, one DQ per node-unit consumer (ONNX Runtime fuses
    each with its consumer) and one shared DQ for the other consumers."""
    for t in tensors:
        s_name, z_name, _ = qparams[t]
        nodes = [helper.make_node("QuantizeLinear", [t, s_name, z_name], [f"{t}_q"], name=f"{t}_QuantizeLinear")]
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
            edits.rename[(id(c), idx)] = out
        edits.after[t] = nodes


def _rewire(model: onnx.ModelProto, edits: _Edits) -> None:
    """Apply the edits in place: weight DQs first, each Q/DQ right after its producer (or at the
    top for graph inputs), consumers renamed, fp32 weights and biases nothing reads dropped."""
    g = model.graph
    new_nodes = list(edits.weight_nodes)
    for i in g.input:
        new_nodes += edits.after.get(i.name, [])
    for n in g.node:
        new_nodes.append(n)
        for o in n.output:
            new_nodes += edits.after.get(o, [])
    for n in g.node:
        for idx in range(len(n.input)):
            if (id(n), idx) in edits.rename:
                n.input[idx] = edits.rename[(id(n), idx)]
    del g.node[:]
    g.node.extend(new_nodes)
    drop_unused_initializers(model, extra=edits.initializers)


def write_qdq_models(onnx_model, result, out_dir, trt_version: int | None = None,
                     bias_correction: bool = True) -> dict[str, Path]:
    """Write model.int8-tensorrt.onnx, model.int8-onnxruntime.onnx and calibration.trtcache
    (all atomic) from a CalibrationResult. onnx_model: ModelProto or path.
    Returns {"tensorrt": path, "onnxruntime": path, "trt_cache": path}."""
    from calibration.trtcache import DEFAULT_TRT_VERSION, write_trt_cache
    from kernels.io import atomic_write_bytes

    if not isinstance(onnx_model, onnx.ModelProto):
        onnx_model = onnx.load(str(onnx_model))
    out_dir = Path(out_dir)
    paths: dict[str, Path] = {}
    missing: list[str] = []
    for enc in ENCODINGS:
        q = quantize_model(onnx_model, result.amax, enc, result.nonneg, result.channel_mean, bias_correction,
                           log_missing=False)
        missing += [t for t in activation_tensors(onnx_model, enc) if t not in result.amax and t not in missing]
        paths[enc] = atomic_write_bytes(out_dir / f"model.int8-{enc}.onnx", q.SerializeToString())
    if missing:  # once per build, not once per encoding or refinement trial
        log.warning("%d tensors have no amax and stay fp32: %s", len(missing), missing[:5])
    trt_tensors = [t for t in activation_tensors(onnx_model, "tensorrt") if t in result.amax]
    amax, _ = shared_amax(onnx_model, result.amax, result.nonneg, trt_tensors)
    paths["trt_cache"] = write_trt_cache(out_dir / "calibration.trtcache",
                                         {t: act_scale(amax[t]) for t in trt_tensors},
                                         trt_version or DEFAULT_TRT_VERSION)
    return paths
