"""Contract tests of the TensorRT module against a stand-in `tensorrt` that follows the 10.x/11.x API.

No GPU or TensorRT here: the stand-in records every builder call and, at run time, executes the
"plan" (the ONNX bytes) with ONNX Runtime, reading and writing through the raw addresses the runner
binds. So the test fails if the runner binds the wrong buffers, shapes or names.
"""
from __future__ import annotations

import ctypes
import enum
import types

import numpy as np
import onnxruntime as ort
import pytest

from engine.runners.base import RunnerError
from engine.runners.tensorrt import TensorRTRunner, build_plan


def make_fake_trt(calls: list, parse_ok: bool = True):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "11.0.0-standin"

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class NetworkDefinitionCreationFlag(enum.IntEnum):
        STRONGLY_TYPED = 1

    class MemoryPoolType(enum.Enum):
        WORKSPACE = 0

    class BuilderFlag(enum.Enum):  # 11.x: FP16 / INT8 are gone; touching them fails like the real module
        TF32 = 7

    class Parser:
        def __init__(self, network, logger):
            self.network, self.num_errors = network, 0 if parse_ok else 1

        def parse(self, data):
            self.network.onnx = data
            calls.append(("parse", len(data)))
            return parse_ok

        def get_error(self, i):
            return "In node 3 (Conv): unsupported"

    class Profile:
        def set_shape(self, name, lo, opt, hi):
            calls.append(("profile", name, lo, opt, hi))

    class Config:
        def set_memory_pool_limit(self, pool, size):
            calls.append(("workspace", pool, size))

        def clear_flag(self, flag):
            calls.append(("clear_flag", flag))

        def set_flag(self, flag):
            calls.append(("set_flag", flag))

        def add_optimization_profile(self, p):
            calls.append(("add_profile",))

    class Network:
        onnx = b""

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            return network.onnx  # the "plan" is the model itself; the fake runtime runs it with ORT

    class Context:
        def __init__(self, session):
            self.session, self.shapes, self.addr = session, {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)

        def get_tensor_shape(self, name):
            assert name == "features"
            out = self.session.run(None, {"images": np.zeros(self.shapes["images"], np.float32)})[0]
            return out.shape

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            shape = self.shapes["images"]
            n = int(np.prod(shape))
            x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr["images"])).reshape(shape)
            y = np.ascontiguousarray(self.session.run(None, {"images": x.copy()})[0])
            ctypes.memmove(self.addr["features"], y.ctypes.data, y.nbytes)
            calls.append(("execute", stream, shape))
            return True

    class Engine:
        def __init__(self, data):
            self.session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])

        def create_execution_context(self):
            return Context(self.session)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine(data) if data else None

    trt.Logger, trt.Builder, trt.Runtime, trt.OnnxParser = Logger, Builder, Runtime, Parser
    trt.NetworkDefinitionCreationFlag, trt.MemoryPoolType, trt.BuilderFlag = (
        NetworkDefinitionCreationFlag, MemoryPoolType, BuilderFlag)
    return trt


def test_build_is_strongly_typed_with_one_profile(tiny_engine, tmp_path):
    res, _ = tiny_engine
    calls: list = []
    trt = make_fake_trt(calls)
    plan = build_plan(res["onnx"], tmp_path / "m.plan", input_size=64, opt_batch=32, max_batch=128, trt=trt)
    assert plan.exists()
    assert ("create_network", 1 << 1) in calls  # STRONGLY_TYPED: precision comes from the graph
    assert ("profile", "images", (1, 3, 64, 64), (32, 3, 64, 64), (128, 3, 64, 64)) in calls
    assert ("clear_flag", trt.BuilderFlag.TF32) in calls  # fp32 means fp32
    assert not [c for c in calls if c[0] == "set_flag"]  # no precision flags (gone in TensorRT 11)


def test_runner_binds_names_shapes_and_addresses(tiny_engine, tmp_path):
    res, _ = tiny_engine
    calls: list = []
    trt = make_fake_trt(calls)
    plan = build_plan(res["onnx"], tmp_path / "m.plan", input_size=64, trt=trt)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64), dtype=np.float32)
    ref = ort.InferenceSession(res["onnx"], providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    with TensorRTRunner(plan, trt=trt, xp=np) as r:
        y = r.infer(x)
        y1 = r.infer(x[:1])
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y1, ref[:1], rtol=1e-6, atol=1e-6)
    assert [c[2] for c in calls if c[0] == "execute"] == [(3, 3, 64, 64), (1, 3, 64, 64)]


def test_parse_failure_names_the_error(tiny_engine, tmp_path):
    res, _ = tiny_engine
    trt = make_fake_trt([], parse_ok=False)
    with pytest.raises(RunnerError, match=r"could not parse .*In node 3 \(Conv\)"):
        build_plan(res["onnx"], tmp_path / "m.plan", input_size=64, trt=trt)
    assert not (tmp_path / "m.plan").exists()


def test_plan_for_another_gpu_is_refused(tiny_engine, tmp_path, monkeypatch):
    import engine.runners.tensorrt as t

    res, _ = tiny_engine
    trt = make_fake_trt([])
    plan = build_plan(res["onnx"], tmp_path / "m.plan", input_size=64, trt=trt)
    monkeypatch.setattr(t, "device_info", lambda: {"tensorrt": "11.0", "gpu": "NVIDIA H200", "compute_capability": "9.0"})
    r = TensorRTRunner(plan, trt=trt, xp=np, expected={"tensorrt": "10.3", "gpu": "NVIDIA GeForce RTX 2080",
                                                       "compute_capability": "7.5"})
    with pytest.raises(RunnerError, match=r"built for .*RTX 2080.*rebuild with `otl engines --backend tensorrt`"):
        r.activate()


def test_missing_plan():
    with pytest.raises(RunnerError, match=r"does not exist; build it"):
        TensorRTRunner("/nonexistent/model.plan")
