"""int8 sensitivity: which quantized activation hurts the int8 model, measured tensor by tensor.

The quantized activations are the tensors a QuantizeLinear node of the int8 ONNX model reads that
are not initializers (weights are int8 initializers + DequantizeLinear there, never Q'd): in the
"tensorrt" encoding the inputs of Conv/Gemm/MatMul; in the "onnxruntime" encoding those plus the
Conv/Gemm outputs (after a lone Relu/Clip) and the Concat members (calibration.placement). Tensors
kept in fp32 (--keep-fp32) have no Q node and are not listed. Each is named by its fp32 tensor name
(the Q input; the fp32 model has the same names, a BatchNormalization's output included).

Per tensor (graph order), with that tensor's scale and zero point from the int8 model:

* tensor_sqnr_db: 10 log10(sum x^2 / sum (x - dq(q(x)))^2), x its value in the fp32 model on the
  images, dq(q(x)) computed in NumPy as ONNX Runtime does (x / scale in float32, round half to
  even, + zero point, saturate to the zero point's type): the error quantizing it alone adds to it.
* output_sqnr_db: SQNR of the model output (all graph outputs) against fp32 when only that tensor
  goes through its Q/DQ: every other activation and every weight stays fp32 (the fp32 model's
  weights), so only that activation's quantization is measured, with its effect downstream.
* cosine_in_int8_model: mean over images of the cosine between its dequantized value in the full
  int8 model, as ONNX Runtime runs it (fused int8 kernels, int8 weights), and its fp32 value.
  A "tensorrt" file runs on ONNX Runtime's CPU here too, not on TensorRT.
* op: the type of the first node (graph order) reading the tensor's DequantizeLinear output in the
  int8 model, i.e. the consumer; in the "onnxruntime" encoding a BatchNormalization is a Conv there.

How: the fp32 model's large initializers are loaded once as ONNX Runtime values that every
session shares (declared external in the graph, handed over from memory), so per tensor only the
graph is serialized: a session of the fp32 graph with one Q/DQ pair on that tensor (every consumer
reads dq(q(t)); a graph output t itself stays fp32), one run over the images. One more session runs
the fp32 model exposing every quantized tensor (the fp32 values and outputs), one the int8 model
exposing each Q output (its integers, dequantized in NumPy exactly as DequantizeLinear does).
Measured on MobileNetV2 at 224 (random weights, 60 tensors, 8 images, 2 cores): 8-10 s (7.9 s with
threads=2 on an idle machine, 9.5 s with threads=1 beside another busy process), 85 % of it the
single-tensor runs (~0.12 s each, a plain fp32 run's time); a Where-switch model in one session
(no per-tensor sessions) was 5x slower: ONNX Runtime reorders layouts around every switch.

None stands for an SQNR that is undefined (no error at all, or an all-zero signal).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.external_data_helper import set_external_data

from kernels.progress import progress_bar

_BATCH = 8  # images per ONNX Runtime run: bounds the memory of the intermediate tensors
_WORST = 10
_PREFIX = "otl_sensitivity"
_ELEM = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.int8): TensorProto.INT8}
_SHARED_BYTES = 4096  # initializers at least this large are loaded once, shared by every session


@dataclass
class _Act:
    """One quantized activation: fp32 name, its Q output in the int8 model, consumer op, qparams."""

    name: str
    q_output: str
    op: str
    scale: np.ndarray  # float32 scalar
    zero_point: np.ndarray  # uint8 / int8 scalar


def _load(model) -> onnx.ModelProto:
    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))


def _activations(int8: onnx.ModelProto, fp32: onnx.ModelProto) -> list[_Act]:
    """The int8 model's quantized activations in the fp32 model's topological order. op: the type
    of the first node (graph order) that reads the tensor's DequantizeLinear output in the int8
    model (in the "onnxruntime" encoding a BatchNormalization is a Conv there)."""
    g = int8.graph
    init = {i.name: i for i in g.initializer}
    dq_outputs: dict[str, list[str]] = {}
    for n in g.node:
        if n.op_type == "DequantizeLinear":
            dq_outputs.setdefault(n.input[0], []).append(n.output[0])
    readers = {}
    for n in g.node:
        for t in n.input:
            readers.setdefault(t, n.op_type)
    position = {i.name: -1 for i in fp32.graph.input}
    position.update({o: k for k, n in enumerate(fp32.graph.node) for o in n.output})
    acts, missing = [], []
    for n in g.node:
        if n.op_type != "QuantizeLinear" or n.input[0] in init:
            continue
        scale, zp = _qparams(n, init)
        ops = [readers[o] for o in dq_outputs.get(n.output[0], []) if o in readers]
        acts.append(_Act(n.input[0], n.output[0], ops[0] if ops else "", scale, zp))
        if n.input[0] not in position:
            missing.append(n.input[0])
    if missing:
        raise ValueError(f"{len(missing)} quantized tensors of the int8 model are not in the fp32 model "
                         f"(another model's file?): {missing[:5]}")
    return sorted(acts, key=lambda a: position[a.name])  # stable: Q order among a graph's inputs


def _qparams(node, init) -> tuple[np.ndarray, np.ndarray]:
    """(float32 scale, zero point) of a per-tensor QuantizeLinear whose parameters are initializers."""
    if node.input[1] not in init:
        raise ValueError(f"{node.name}: the scale is not an initializer; only constant Q/DQ is supported")
    scale = numpy_helper.to_array(init[node.input[1]]).astype(np.float32)
    if len(node.input) > 2 and node.input[2]:
        if node.input[2] not in init:
            raise ValueError(f"{node.name}: the zero point is not an initializer")
        zp = numpy_helper.to_array(init[node.input[2]])
    else:
        zp = np.array(0, np.uint8)  # ONNX's default
    if scale.size != 1 or zp.size != 1:
        raise ValueError(f"{node.name}: per-axis activation quantization is not supported")
    if zp.dtype not in _ELEM:
        raise ValueError(f"{node.name}: {zp.dtype} quantization is not supported (uint8 and int8 are)")
    return scale.reshape(()), zp.reshape(())


def fake_quant(x: np.ndarray, scale, zero_point) -> np.ndarray:
    """dq(q(x)) as ONNX Runtime computes QuantizeLinear -> DequantizeLinear on float32 x:
    saturate(round_half_even(x / scale) + zero_point) to the zero point's integer type, then
    (q - zero_point) * scale, all in float32."""
    zero_point = np.asarray(zero_point)
    info = np.iinfo(zero_point.dtype)
    s, z = np.float32(scale), np.float32(zero_point)
    q = np.asarray(x, np.float32) / s
    np.rint(q, out=q)
    q += z
    np.clip(q, info.min, info.max, out=q)
    q -= z
    q *= s
    return q


class _Sessions:
    """ONNX Runtime CPU sessions of variants of one fp32 graph whose large weights are loaded once:
    `graph` is the fp32 model with those initializers declared external (no data), and every
    session made with shared=True gets them from memory."""

    def __init__(self, fp32: onnx.ModelProto, threads: int | None):
        import onnxruntime as ort

        self.ort, self.threads = ort, threads
        self.graph = onnx.ModelProto()
        self.graph.CopyFrom(fp32)
        self.names, self.arrays = [], []  # the OrtValues borrow the arrays' memory: keep them
        for i in self.graph.graph.initializer:
            if i.data_location == TensorProto.EXTERNAL or len(i.raw_data) < _SHARED_BYTES:
                continue
            self.names.append(i.name)
            self.arrays.append(numpy_helper.to_array(i))
            set_external_data(i, location=f"{_PREFIX}.shared")  # never read: handed over below
            i.ClearField("raw_data")
        self.values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self.arrays]

    def session(self, model: onnx.ModelProto, shared: bool = True):
        opts = self.ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.log_severity_level = 3
        if shared and self.names:
            opts.add_external_initializers(self.names, self.values)
        return self.ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def _with_qdq(graph: onnx.ModelProto, a: _Act) -> onnx.ModelProto:
    """A copy of the (fp32) graph where every consumer of a.name reads dq(q(a.name)) with a's
    scale and zero point; the Q/DQ pair right after a.name's producer (first for a graph input)."""
    m = onnx.ModelProto()
    m.CopyFrom(graph)
    g = m.graph
    qp = [f"{_PREFIX}_scale", f"{_PREFIX}_zero_point"]
    g.initializer.extend([numpy_helper.from_array(a.scale, qp[0]), numpy_helper.from_array(a.zero_point, qp[1])])
    qdq = [helper.make_node("QuantizeLinear", [a.name, *qp], [f"{_PREFIX}_q"], name=f"{_PREFIX}_Q"),
           helper.make_node("DequantizeLinear", [f"{_PREFIX}_q", *qp], [f"{_PREFIX}_dq"], name=f"{_PREFIX}_DQ")]
    nodes = list(qdq) if any(i.name == a.name for i in g.input) else []
    for n in g.node:
        for k, t in enumerate(n.input):
            if t == a.name:
                n.input[k] = f"{_PREFIX}_dq"
        nodes += [n] + (qdq if a.name in n.output else [])
    del g.node[:]
    g.node.extend(nodes)
    return m


def _with_outputs(model: onnx.ModelProto, names, elem_types) -> onnx.ModelProto:
    """A copy of the model with the given tensors graph outputs too. On the int8 model, pass Q
    outputs (the integers), not DQ outputs: a DQ feeding a graph output would stop ONNX Runtime
    fusing it into its consumer's int8 kernel, and the model would no longer run as it does."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(t, e, None) for t, e in zip(names, elem_types)
                          if t not in have)
    return m


def _flat(ys) -> np.ndarray:
    """Graph outputs of one run as one (N, F) float64 array."""
    return np.concatenate([np.asarray(y, np.float64).reshape(len(y), -1) for y in ys], axis=1)


def _db(signal: float, noise: float) -> float | None:
    if noise <= 0 or signal <= 0 or not math.isfinite(noise):
        return None
    return round(10.0 * math.log10(signal / noise), 3)


def _rows_dot(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image dot products of two (N, ...) float32 arrays, accumulated in float64."""
    return np.einsum("ij,ij->i", a.reshape(len(a), -1), b.reshape(len(b), -1), dtype=np.float64)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image cosine of two (N, ...) arrays (1 where both are zero, 0 where only one is)."""
    na, nb, dot = np.sqrt(_rows_dot(a, a)), np.sqrt(_rows_dot(b, b)), _rows_dot(a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        c = dot / (na * nb)
    return np.where(na * nb > 0, c, np.where((na == 0) & (nb == 0), 1.0, 0.0))


def _reference_pass(fp32, int8, acts: list[_Act], outputs: list[str], batches) -> dict:
    """Every batch through the fp32 model and the full int8 model (both exposing the tensors): per
    tensor sum x^2 and sum (x - dq(q(x)))^2 (tensor_sqnr_db) and the per-image cosines of its int8
    value with x; the fp32 and int8 outputs as (N, F) float64."""
    k = len(outputs)
    sums = np.zeros((len(acts), 2))
    cos = [[] for _ in acts]
    ref, out8 = [], []
    for x in batches:
        ys = fp32.run(outputs + [a.name for a in acts], {fp32.get_inputs()[0].name: x})
        qs = int8.run(outputs + [a.q_output for a in acts], {int8.get_inputs()[0].name: x})
        ref.append(_flat(ys[:k]))
        out8.append(_flat(qs[:k]))
        for i, (a, v, q) in enumerate(zip(acts, ys[k:], qs[k:])):
            e = v - fake_quant(v, a.scale, a.zero_point)
            sums[i] += (_rows_dot(v, v).sum(), _rows_dot(e, e).sum())
            dq = q.astype(np.float32)
            dq -= np.float32(a.zero_point)
            dq *= a.scale  # DequantizeLinear: (q - zero point) * scale in float32
            cos[i].append(_cosines(v, dq))
    return {"sums": sums, "cos": [float(np.concatenate(c).mean()) for c in cos],
            "ref": np.concatenate(ref), "int8": np.concatenate(out8)}


def _output_noise(sessions: _Sessions, a: _Act, outputs: list[str], batches, ref: np.ndarray) -> float:
    """sum (y - y_fp32)^2 over the outputs of the fp32 model with only a's Q/DQ pair added."""
    sess = sessions.session(_with_qdq(sessions.graph, a))
    name = sess.get_inputs()[0].name
    y = np.concatenate([_flat(sess.run(outputs, {name: x})) for x in batches])
    return float(np.sum((y - ref) ** 2))


def int8_sensitivity(int8_onnx: str | Path, fp32_onnx: str | Path, images: np.ndarray, threshold: float = 0.99,
                     threads: int | None = None, progress: bool | None = None) -> dict:
    """Per quantized activation of the int8 model (see the module docstring for what each number
    measures): {"images": N, "threshold", "tensors": [{"name", "order", "op", "tensor_sqnr_db",
    "output_sqnr_db", "cosine_in_int8_model"}, ...] in graph order, "worst": the names of the ten
    lowest output_sqnr_db, "first_below": {"name", "order", "cosine"} of the first tensor whose
    cosine_in_int8_model < threshold (None if none), "output_sqnr_db_all": the full int8 model's
    output against fp32}. images: (N, 3, H, W) float32, preprocessed. The models: paths (or
    ModelProtos). ONNX Runtime CPU sessions with `threads` intra-op threads; a bar over tensors."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"images: expected an (N, C, H, W) batch of at least one image, got shape {images.shape}")
    int8, fp32 = _load(int8_onnx), _load(fp32_onnx)
    acts = _activations(int8, fp32)
    outputs = [o.name for o in fp32.graph.output]
    sessions = _Sessions(fp32, threads)
    batches = [images[i:i + _BATCH] for i in range(0, len(images), _BATCH)]
    base = _reference_pass(
        sessions.session(_with_outputs(sessions.graph, [a.name for a in acts], [TensorProto.FLOAT] * len(acts))),
        sessions.session(_with_outputs(int8, [a.q_output for a in acts], [_ELEM[a.zero_point.dtype] for a in acts]),
                         shared=False), acts, outputs, batches)
    signal = float(np.sum(base["ref"] ** 2))
    rows = []
    with progress_bar(progress, total=len(acts), desc="int8 sensitivity", unit="tensor") as bar:
        for i, a in enumerate(acts):
            rows.append({"name": a.name, "order": i, "op": a.op, "tensor_sqnr_db": _db(*base["sums"][i]),
                         "output_sqnr_db": _db(signal, _output_noise(sessions, a, outputs, batches, base["ref"])),
                         "cosine_in_int8_model": round(base["cos"][i], 6)})
            bar.update(1)
    below = next((i for i, c in enumerate(base["cos"]) if c < threshold), None)
    worst = sorted(rows, key=lambda r: math.inf if r["output_sqnr_db"] is None else r["output_sqnr_db"])
    return {"images": len(images), "threshold": threshold, "tensors": rows,
            "worst": [r["name"] for r in worst[:_WORST]],
            "first_below": None if below is None else {"name": acts[below].name, "order": below,
                                                       "cosine": round(base["cos"][below], 6)},
            "output_sqnr_db_all": _db(signal, float(np.sum((base["int8"] - base["ref"]) ** 2)))}
