"""int8 sensitivity (engine.report.sensitivity) against references computed here: NumPy's
quantization error, the uniform-noise formula, ONNX Runtime's own Q/DQ, an fp32 model with one
Q/DQ pair inserted by this file, and a deliberately broken scale.

Models: a hand-written 3-Conv net (known scale on its input) and MobileNetV2's first 11 feature
blocks with random weights at 32x32, exported with the TorchScript exporter (seconds faster than
the project's dynamo export; the analysis only reads ONNX) and calibrated here by max |x| over 16
random images (which amax values does not matter: the tests compare against references computed on
whatever scales the int8 model has).
"""
from __future__ import annotations

import io
import json
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from calibration import calibration_tensors, quantize_model
from engine.report.schema import SENSITIVITY_KEYS, TENSOR_KEYS
from engine.report.sensitivity import fake_quant, int8_sensitivity

from helpers import ort_features

_BLOCKS = 11  # features[:11]: through the 64-channel residual blocks, 36 quantized tensors


def _db(signal, noise) -> float:
    return 10 * np.log10(np.sum(np.square(signal, dtype=np.float64)) / np.sum(np.square(noise, dtype=np.float64)))


def _with_outputs(model, names):
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in names)
    return m


def _max_calibration(model, x):
    """(amax, nonneg) of every tensor either encoding quantizes: max |t| and min t >= 0 on x."""
    import onnxruntime as ort

    names = calibration_tensors(model)
    inner = [t for t in names if t != "images"]
    sess = ort.InferenceSession(_with_outputs(model, inner).SerializeToString(), providers=["CPUExecutionProvider"])
    values = dict(zip(inner, sess.run(inner, {"images": x})), images=x)
    return ({t: float(np.abs(values[t]).max()) for t in names}, {t: bool(values[t].min() >= 0) for t in names})


def _tiny_model():
    """images (N, 3, 8, 8) -> Conv -> Relu -> [Conv 1x1 + residual] -> Conv -> Flatten -> features."""
    rng = np.random.default_rng(0)
    w = {"w1": rng.standard_normal((8, 3, 3, 3)) * 0.3, "b1": rng.standard_normal(8) * 0.1,
         "w2": rng.standard_normal((8, 8, 1, 1)) * 0.3, "w3": rng.standard_normal((4, 8, 3, 3)) * 0.2}
    nodes = [helper.make_node("Conv", ["images", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"]),
             helper.make_node("Add", ["c2", "r1"], ["s"]),
             helper.make_node("Conv", ["s", "w3"], ["c3"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["c3"], ["features"])]
    g = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["n", 3, 8, 8])],
                          [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["n", 256])],
                          [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _inlined(model):
    """The TorchScript export with its Constant nodes and Identity-of-initializer nodes (shared
    biases) turned into initializers, as the project's exporter writes them."""
    init = {i.name: i for i in model.graph.initializer}
    nodes = []
    for n in model.graph.node:
        if n.op_type == "Constant":
            init[n.output[0]] = numpy_helper.from_array(numpy_helper.to_array(n.attribute[0].t), n.output[0])
        elif n.op_type == "Identity" and n.input[0] in init:
            init[n.output[0]] = numpy_helper.from_array(numpy_helper.to_array(init[n.input[0]]), n.output[0])
        else:
            nodes.append(n)
    del model.graph.node[:], model.graph.initializer[:]
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(init.values())
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def mobilenet():
    """(fp32 ModelProto, int8 "onnxruntime" ModelProto, 8 test images) at 32x32, random weights."""
    import torch
    import torchvision

    torch.manual_seed(0)
    features = torchvision.models.mobilenet_v2(weights=None).features[:_BLOCKS]
    net = torch.nn.Sequential(features, torch.nn.Flatten(1)).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(1, 3, 32, 32),), buf, dynamo=False, input_names=["images"],
                          output_names=["features"], opset_version=17,
                          dynamic_axes={"images": {0: "n"}, "features": {0: "n"}})
    fp32 = _inlined(onnx.load_from_string(buf.getvalue()))
    rng = np.random.default_rng(1)
    amax, nonneg = _max_calibration(fp32, rng.standard_normal((16, 3, 32, 32)).astype(np.float32))
    int8 = quantize_model(fp32, amax, "onnxruntime", nonneg)
    return fp32, int8, rng.standard_normal((8, 3, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def clean(mobilenet):
    fp32, int8, x = mobilenet
    return int8_sensitivity(int8, fp32, x, threads=2, progress=False)


def test_fake_quant_is_onnx_runtimes_quantize_dequantize():
    """Ties (x / scale = k + 1/2 exactly, scale a power of two) and saturation included."""
    import onnxruntime as ort

    x = np.concatenate([np.arange(-140, 140, 0.5), np.random.default_rng(0).standard_normal(1000) * 40])
    x = (x * 0.25).astype(np.float32)
    for zp in (np.uint8(128), np.uint8(0), np.int8(0)):
        g = helper.make_graph([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                               helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])], "qdq",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(0.25, np.float32), "s"),
                               numpy_helper.from_array(np.array(zp), "z")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
        want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_array_equal(fake_quant(x, 0.25, zp), want)


@pytest.mark.parametrize("encoding", ["onnxruntime", "tensorrt"])
def test_tensor_sqnr_of_a_known_scale(encoding):
    """The input quantized with amax 4 (scale 4/127) on N(0, 1) images: NumPy's error, and the
    uniform-noise formula SQNR = 10 log10(12 var / scale^2) (~40.8 dB: clipping beyond 4 sigma is
    negligible); its cosine in the int8 model is that of x and dq(q(x))."""
    model = _tiny_model()
    x = np.random.default_rng(3).standard_normal((16, 3, 8, 8)).astype(np.float32)
    amax, nonneg = _max_calibration(model, x)
    amax["images"] = 4.0
    rep = int8_sensitivity(quantize_model(model, amax, encoding, nonneg), model, x, threads=2, progress=False)
    row = next(r for r in rep["tensors"] if r["name"] == "images")
    s = np.float64(np.float32(4.0 / 127))
    x64 = x.astype(np.float64)
    dq = np.clip(np.round(x64 / s), -128, 127) * s
    assert row["tensor_sqnr_db"] == pytest.approx(_db(x64, x64 - dq), abs=2e-3)
    assert row["tensor_sqnr_db"] == pytest.approx(10 * np.log10(12 * x64.var() / s**2), abs=0.3)
    assert row["tensor_sqnr_db"] > 30
    assert row["cosine_in_int8_model"] == pytest.approx(_cosine(x64, dq), abs=2e-6)
    assert row["order"] == 0 and row["op"] == "Conv"
    assert {r["name"] for r in rep["tensors"]} >= {"images", "r1", "s"}  # the Conv inputs, both encodings


def _insert_qdq(fp32, int8, name):
    """fp32 with every consumer of `name` reading DQ(Q(name)) at the int8 model's scale, written
    here from the int8 model's Q node (not the module's code)."""
    q = next(n for n in int8.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name)
    init = {i.name: i for i in int8.graph.initializer}
    m = onnx.ModelProto()
    m.CopyFrom(fp32)
    m.graph.initializer.extend([init[q.input[1]], init[q.input[2]]])
    pair = [helper.make_node("QuantizeLinear", [name, q.input[1], q.input[2]], ["ref_q"]),
            helper.make_node("DequantizeLinear", ["ref_q", q.input[1], q.input[2]], ["ref_dq"])]
    nodes = list(pair) if name == "images" else []
    for n in m.graph.node:
        n.input[:] = ["ref_dq" if t == name else t for t in n.input]
        nodes += [n] + (pair if name in n.output else [])
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    return m


def test_output_sqnr_matches_an_inserted_qdq_pair(mobilenet, clean):
    fp32, int8, x = mobilenet
    ref = ort_features(fp32, x).astype(np.float64)
    rows = clean["tensors"]
    for r in (rows[0], rows[len(rows) // 2], rows[-1]):
        got = ort_features(_insert_qdq(fp32, int8, r["name"]), x)
        assert r["output_sqnr_db"] == pytest.approx(_db(ref, got - ref), abs=0.05), r
    assert clean["output_sqnr_db_all"] == pytest.approx(_db(ref, ort_features(int8, x) - ref), abs=0.05)


def test_cosine_is_measured_in_the_int8_model(mobilenet, clean):
    """Against the int8 model's own DequantizeLinear outputs (exposed here, ONNX Runtime's graph
    optimizations off) and the fp32 model's tensors; the error accumulates along the int8 model,
    so the last tensor's cosine there is lower than that of quantizing its fp32 value alone."""
    import onnxruntime as ort

    fp32, int8, x = mobilenet
    rows = clean["tensors"]
    q_of = {n.input[0]: n for n in int8.graph.node if n.op_type == "QuantizeLinear"}
    dq_of = {n.input[0]: n.output[0] for n in int8.graph.node if n.op_type == "DequantizeLinear"}
    names = [r["name"] for r in rows]
    dqs = [dq_of[q_of[t].output[0]] for t in names]
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    v8 = ort.InferenceSession(_with_outputs(int8, dqs).SerializeToString(), opts,
                              providers=["CPUExecutionProvider"]).run(dqs, {"images": x})
    inner = names[1:]
    assert names[0] == "images"
    v32 = [x] + ort.InferenceSession(_with_outputs(fp32, inner).SerializeToString(),
                                     providers=["CPUExecutionProvider"]).run(inner, {"images": x})
    for r, a, b in zip(rows, v32, v8):
        assert r["cosine_in_int8_model"] == pytest.approx(_cosine(a, b), abs=2e-6), r["name"]
    init = {i.name: numpy_helper.to_array(i) for i in int8.graph.initializer}
    q = q_of[names[-1]]
    alone = _cosine(v32[-1], fake_quant(v32[-1], init[q.input[1]], init[q.input[2]]))
    assert rows[-1]["cosine_in_int8_model"] < alone - 3e-4, (rows[-1], alone)  # measured 0.99900 vs 0.99994


def _cosine(a, b) -> float:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return float(np.mean(np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)))


def test_each_tensor_alone_hurts_less_than_the_whole_int8_model(clean):
    """Every tensor's error alone is smaller than all of them together plus the int8 weights.
    Measured (random weights, 32x32, 36 tensors): the whole model 26.8 dB, the worst tensor alone
    37.5 dB, the best 72.2 dB (residual branches barely reach the output at random init)."""
    worst = min(r["output_sqnr_db"] for r in clean["tensors"])
    assert worst > clean["output_sqnr_db_all"] + 3, (worst, clean["output_sqnr_db_all"])


def test_tensors_follow_the_graph_and_exist_in_fp32(mobilenet, clean):
    fp32, int8, _ = mobilenet
    onnx.checker.check_model(fp32)  # nodes topologically sorted
    position = {i.name: -1 for i in fp32.graph.input}
    position.update({o: k for k, n in enumerate(fp32.graph.node) for o in n.output})
    rows = clean["tensors"]
    quantized = [n.input[0] for n in int8.graph.node if n.op_type == "QuantizeLinear"]
    assert sorted(r["name"] for r in rows) == sorted(quantized) and len(rows) > 30
    assert [r["order"] for r in rows] == list(range(len(rows)))
    assert all(r["name"] in position for r in rows)
    pos = [position[r["name"]] for r in rows]
    assert pos == sorted(pos) and pos[0] == -1  # the input first, then by producer
    assert {r["op"] for r in rows} <= {"Conv", "Add"} and rows[0]["op"] == "Conv"
    by_sqnr = sorted(rows, key=lambda r: r["output_sqnr_db"])
    assert [rows[[r["name"] for r in rows].index(n)]["output_sqnr_db"] for n in clean["worst"]] == \
        [r["output_sqnr_db"] for r in by_sqnr[:10]]
    assert clean["images"] == 8 and all(0.9 < r["cosine_in_int8_model"] <= 1 for r in rows)
    assert set(clean) == set(SENSITIVITY_KEYS) - {"cut", "backend", "status", "error"}  # run.py adds those
    assert all(tuple(r) == TENSOR_KEYS for r in rows)
    json.dumps(clean, allow_nan=False)


def test_a_broken_scale_is_the_worst_and_first_below(mobilenet, clean):
    """One activation scale x50 (its Q and DQs share the initializer): that tensor becomes the worst,
    every other tensor's own numbers stay exactly as they were (each is measured alone), tensors
    upstream keep their cosines, and the first tensor under the threshold is the broken one.
    Measured: its tensor SQNR 45.4 -> 11.4 dB, output SQNR 66.8 -> 33.2 dB (next worst 37.5)."""
    fp32, int8, x = mobilenet
    rows = clean["tensors"]
    k = len(rows) // 2
    while rows[k]["op"] != "Conv":
        k += 1
    threshold = min(r["cosine_in_int8_model"] for r in rows) - 1e-3  # nothing below it in the clean model
    name = rows[k]["name"]
    broken = onnx.ModelProto()
    broken.CopyFrom(int8)
    q = next(n for n in broken.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == name)
    s = next(i for i in broken.graph.initializer if i.name == q.input[1])
    s.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(s) * np.float32(50), s.name))
    rep = int8_sensitivity(broken, fp32, x, threshold=threshold, threads=2, progress=False)
    new = rep["tensors"]
    assert rep["worst"][0] == name
    assert new[k]["tensor_sqnr_db"] < rows[k]["tensor_sqnr_db"] - 20
    for a, b in zip(rows, new):
        if b["name"] != name:
            assert (a["tensor_sqnr_db"], a["output_sqnr_db"]) == (b["tensor_sqnr_db"], b["output_sqnr_db"])
    assert [r["cosine_in_int8_model"] for r in new[:k]] == [r["cosine_in_int8_model"] for r in rows[:k]]
    assert rep["first_below"]["name"] == name and rep["first_below"]["order"] == k
    assert rep["first_below"]["cosine"] < threshold
    assert rep["output_sqnr_db_all"] < clean["output_sqnr_db_all"]


def test_bad_inputs(mobilenet):
    fp32, int8, x = mobilenet
    with pytest.raises(ValueError, match=r"expected an \(N, C, H, W\) batch"):
        int8_sensitivity(int8, fp32, x[0], progress=False)
    tiny = _tiny_model()
    amax, nonneg = _max_calibration(tiny, np.ones((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match="not in the fp32 model"):
        int8_sensitivity(quantize_model(tiny, amax, "tensorrt", nonneg), fp32, x, progress=False)
