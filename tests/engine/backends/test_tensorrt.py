"""Contract tests of the TensorRT backend against stand-ins for `tensorrt` and `cupy`.

No GPU or TensorRT here. The `tensorrt` stand-in follows the 10.x/11.x Python API and checks its
invariants the way the real library does: a dynamic-shape network needs a registered profile on
the config it is built with, `set_input_shape` returns False outside the profile, Q/DQ graphs
must be signed (TensorRT rejects uint8 Q/DQ). Its "plan" is the ONNX model with the profile in a
header; at run time it executes that model with ONNX Runtime, reading and writing through the
raw addresses the runner binds, so wrong buffers, shapes or names give wrong numbers. The `cupy`
stand-in is NumPy with a recording CUDA stream and device properties.
"""
from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import sys
import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from engine.backends.base import RunnerError
from engine.backends.tensorrt.builder import build_plan
from engine.backends.tensorrt.device import device_info
from engine.backends.tensorrt.runner import TensorRTRunner
from helpers import TINY, ort_features

MAGIC = b"FAKEPLAN"


# ----------------------------------------------------------------------------- tensorrt stand-in


class Logger:
    WARNING = 2

    def __init__(self, level):
        self.level = level


class NetworkDefinitionCreationFlag(enum.IntEnum):  # 10.x layout (11.x keeps the member, deprecated)
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class MemoryPoolType(enum.Enum):
    WORKSPACE = 0


class BuilderFlag(enum.Enum):  # 11.x: FP16 / INT8 are gone; touching them fails like the real module
    TF32 = 7


class Network:
    onnx = b""


class Parser:
    def __init__(self, network, logger, calls, parse_ok):
        self.network, self.calls, self.parse_ok, self.errors = network, calls, parse_ok, []

    @property
    def num_errors(self):
        return len(self.errors)

    def parse(self, data):
        self.calls.append(("parse", len(data)))
        if not self.parse_ok:
            self.errors.append("In node 3 (Conv): unsupported")
        for init in onnx.load_from_string(data).graph.initializer:
            if init.name.endswith("zero_point") and init.data_type == onnx.TensorProto.UINT8:
                self.errors.append(f"{init.name}: TensorRT supports signed int8 Q/DQ only (zero point 0)")
        self.network.onnx = data
        return not self.errors

    def get_error(self, i):
        return self.errors[i]


class Profile:
    def __init__(self):
        self.shapes = {}

    def set_shape(self, name, lo, opt, hi):
        assert all(a <= b <= c for a, b, c in zip(lo, opt, hi)), "TensorRT requires min <= opt <= max"
        self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))


class Config:
    def __init__(self, calls):
        self.calls, self.profiles, self.workspace, self.cleared = calls, [], None, set()

    def set_memory_pool_limit(self, pool, size):
        self.workspace = (pool, size)
        self.calls.append(("workspace", pool, size))

    def clear_flag(self, flag):
        self.cleared.add(flag)
        self.calls.append(("clear_flag", flag))

    def set_flag(self, flag):
        self.calls.append(("set_flag", flag))

    def add_optimization_profile(self, p):
        self.profiles.append(p)
        self.calls.append(("add_profile",))
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger, calls, parse_ok):
        self.calls, self.parse_ok, self.configs = calls, parse_ok, []

    def create_network(self, flags):
        self.calls.append(("create_network", flags))
        return Network()

    def create_builder_config(self):
        self.configs.append(Config(self.calls))
        return self.configs[-1]

    def create_optimization_profile(self):
        return Profile()

    def build_serialized_network(self, network, config):
        assert config in self.configs, "built with a config this builder did not make"
        if not config.profiles:
            return None  # a dynamic-shape network without a profile does not build
        self.calls.append(("build", config))
        header = json.dumps(config.profiles[0].shapes).encode()
        return MAGIC + header + b"\n" + network.onnx


class Context:
    def __init__(self, session, profile, calls):
        self.session, self.profile, self.calls, self.shapes, self.addr = session, profile, calls, {}, {}

    def set_input_shape(self, name, shape):
        lo, _, hi = self.profile[name]
        shape = tuple(shape)
        if len(shape) != len(lo) or not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name):
        assert name == "features"
        return self.session.run(None, {"images": np.zeros(self.shapes["images"], np.float32)})[0].shape

    def set_tensor_address(self, name, ptr):
        self.addr[name] = ptr

    def execute_async_v3(self, stream_handle):
        shape = self.shapes["images"]
        n = int(np.prod(shape))
        x = np.ctypeslib.as_array((ctypes.c_float * n).from_address(self.addr["images"])).reshape(shape)
        y = np.ascontiguousarray(self.session.run(None, {"images": x.copy()})[0])
        ctypes.memmove(self.addr["features"], y.ctypes.data, y.nbytes)
        self.calls.append(("execute", stream_handle, shape))
        return True


class CudaEngine:
    def __init__(self, data, calls):
        header, model = data[len(MAGIC):].split(b"\n", 1)
        self.profile = {k: tuple(tuple(s) for s in v) for k, v in json.loads(header).items()}
        self.session, self.calls = ort.InferenceSession(model, providers=["CPUExecutionProvider"]), calls

    def create_execution_context(self):
        return Context(self.session, self.profile, self.calls)


def make_fake_trt(calls: list, parse_ok: bool = True) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
    trt.__version__ = "10.3.0-standin"
    trt.Logger, trt.NetworkDefinitionCreationFlag, trt.MemoryPoolType, trt.BuilderFlag = (
        Logger, NetworkDefinitionCreationFlag, MemoryPoolType, BuilderFlag)
    trt.Builder = lambda logger: Builder(logger, calls, parse_ok)
    trt.OnnxParser = lambda network, logger: Parser(network, logger, calls, parse_ok)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return CudaEngine(data, calls) if data.startswith(MAGIC) else None

    trt.Runtime = Runtime
    return trt


# ----------------------------------------------------------------------------- cupy stand-in


class Stream:
    def __init__(self, calls, non_blocking=False):
        self.calls, self.non_blocking, self.ptr = calls, non_blocking, 0xC0FFEE

    def __enter__(self):
        self.calls.append(("stream_enter",))
        return self

    def __exit__(self, *exc):
        self.calls.append(("stream_exit",))

    def synchronize(self):
        self.calls.append(("synchronize",))


def make_fake_cupy(calls: list, name=b"NVIDIA H200", major=9, minor=0, devices=1) -> types.ModuleType:
    cp = types.ModuleType("cupy")
    cp.__spec__ = importlib.machinery.ModuleSpec("cupy", None)
    cp.float32, cp.asarray, cp.ascontiguousarray, cp.empty = np.float32, np.asarray, np.ascontiguousarray, np.empty
    device = types.SimpleNamespace(id=0, compute_capability=f"{major}{minor}")  # a string, as in CuPy
    runtime = types.SimpleNamespace(getDeviceCount=lambda: devices,
                                    getDeviceProperties=lambda i: {"name": name, "major": major, "minor": minor})
    cp.cuda = types.SimpleNamespace(Stream=lambda non_blocking=False: Stream(calls, non_blocking),
                                    Device=lambda *a: device, runtime=runtime)
    return cp


@pytest.fixture
def fake_gpu(monkeypatch):
    """sys.modules holds the stand-ins, so the code under test imports them as it would the real ones."""
    calls: list = []
    trt, cp = make_fake_trt(calls), make_fake_cupy(calls)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    return calls, trt, cp


# ----------------------------------------------------------------------------- tests


def test_build_is_strongly_typed_with_one_profile(tiny_engine, tmp_path):
    res, _ = tiny_engine
    calls: list = []
    trt = make_fake_trt(calls)
    plan = build_plan(res["onnx"], tmp_path / "m.plan", input_size=64, opt_batch=32, max_batch=128, trt=trt)
    assert plan.read_bytes().startswith(MAGIC)
    assert ("create_network", 1 << 1) in calls  # the STRONGLY_TYPED bit: precision comes from the graph
    assert ("workspace", MemoryPoolType.WORKSPACE, 4 << 30) in calls  # 4 GiB, in bytes
    assert ("clear_flag", BuilderFlag.TF32) in calls  # fp32 means fp32
    assert not [c for c in calls if c[0] == "set_flag"]  # no precision flags (gone in TensorRT 11)
    (config,) = [c[1] for c in calls if c[0] == "build"]  # the config that was built is the one configured
    assert config.workspace and BuilderFlag.TF32 in config.cleared and len(config.profiles) == 1
    assert config.profiles[0].shapes == {"images": ((1, 3, 64, 64), (32, 3, 64, 64), (128, 3, 64, 64))}


def test_runner_binds_names_shapes_addresses_and_one_stream(tiny_engine, tmp_path, fake_gpu):
    calls, trt, cp = fake_gpu
    res, _ = tiny_engine
    plan = build_plan(res["onnx"], tmp_path / "m.plan", input_size=64, max_batch=8)
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64), dtype=np.float32)
    ref = ort_features(res["onnx"], x)
    with TensorRTRunner(plan) as r:  # xp = the cupy stand-in
        del calls[:]
        y = r.infer(x)
        y1 = r.infer(x[:1])
    np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(y1, ref[:1], rtol=1e-6, atol=1e-6)
    assert [c[2] for c in calls if c[0] == "execute"] == [(3, 3, 64, 64), (1, 3, 64, 64)]
    assert {c[1] for c in calls if c[0] == "execute"} == {0xC0FFEE}  # the stream's handle, not 0 or the object
    names = [c[0] for c in calls]
    for i in (i for i, n in enumerate(names) if n == "execute"):  # launched inside the stream, then synchronized
        assert names[i - 1] != "stream_exit" and names[i + 1:i + 3] == ["stream_exit", "synchronize"]


def test_batch_outside_the_profile_is_refused(tiny_engine, tmp_path, fake_gpu):
    res, _ = tiny_engine
    plan = build_plan(res["onnx"], tmp_path / "m.plan", input_size=64, opt_batch=4, max_batch=4)
    with TensorRTRunner(plan) as r:
        assert r.infer(np.zeros((4, 3, 64, 64), np.float32)).shape[0] == 4
        with pytest.raises(RunnerError, match=r"refused an input of shape \(5, 3, 64, 64\).*smaller --batch-size"):
            r.infer(np.zeros((5, 3, 64, 64), np.float32))
        with pytest.raises(RunnerError, match=r"refused an input of shape \(2, 3, 32, 32\)"):
            r.infer(np.zeros((2, 3, 32, 32), np.float32))


def test_parse_failure_names_the_error(tiny_engine, tmp_path):
    res, _ = tiny_engine
    trt = make_fake_trt([], parse_ok=False)
    with pytest.raises(RunnerError, match=r"could not parse .*In node 3 \(Conv\)"):
        build_plan(res["onnx"], tmp_path / "m.plan", input_size=64, trt=trt)
    assert not (tmp_path / "m.plan").exists()


@pytest.mark.parametrize("major,minor,want", [(9, 0, "9.0"), (10, 0, "10.0"), (12, 1, "12.1")])
def test_device_info_reads_the_compute_capability(fake_gpu, monkeypatch, major, minor, want):
    monkeypatch.setitem(sys.modules, "cupy", make_fake_cupy([], major=major, minor=minor))
    assert device_info() == {"tensorrt": "10.3.0-standin", "gpu": "NVIDIA H200", "compute_capability": want}


def test_plan_for_another_gpu_is_refused_with_a_rebuild_that_works(tiny_engine, tmp_path, fake_gpu):
    res, _ = tiny_engine
    plan = build_plan(res["onnx"], tmp_path / "m.plan", input_size=64)
    r = TensorRTRunner(plan, expected={"tensorrt": "10.3.0-standin", "gpu": "NVIDIA GeForce RTX 2080",
                                       "compute_capability": "7.5"})
    with pytest.raises(RunnerError, match=r"built for .*RTX 2080.*this machine has .*H200.*"
                                          r"rebuild with `otl engines --backend tensorrt --force`"):
        r.activate()
    here = TensorRTRunner(plan, expected=device_info())  # the real device_info, on the stand-in GPU
    with here:
        assert here.infer(np.zeros((1, 3, 64, 64), np.float32)).shape[0] == 1


def test_missing_plan():
    with pytest.raises(RunnerError, match=r"does not exist; build it"):
        TensorRTRunner("/nonexistent/model.plan")


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_folder_through_the_registry(tmp_path, fake_gpu, precision):
    """make_build(backend="tensorrt") -> manifest (plan, device) -> Build.runner(): the whole wiring,
    each precision's graph handed to the parser (int8: the signed `tensorrt` encoding, or it fails)."""
    from engine.backends import resolve_backend
    from engine.build import BuildConfig, make_build
    from engine.build_folder import Build

    calls, _, _ = fake_gpu
    assert resolve_backend("auto") == "tensorrt"  # importable and a device: what auto means
    res = make_build(BuildConfig(**TINY, precision=precision, backend="auto", out=str(tmp_path / "b"),
                                 calibration_images=16, batch_size=4, max_batch=8, threads=2))
    assert res["backend"] == "tensorrt" and res["artifact"].endswith(f"model.{precision}.plan")
    build = Build(res["build_dir"])
    m = build.manifest
    assert m["device"] == {"tensorrt": "10.3.0-standin", "gpu": "NVIDIA H200", "compute_capability": "9.0"}
    assert m["files"]["plan"]["path"] == f"model.{precision}.plan" and m["emulated"] is False
    (config,) = [c[1] for c in calls if c[0] == "build"]
    assert config.profiles[0].shapes["images"] == ((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64))
    x = np.random.default_rng(1).standard_normal((3, 3, 64, 64), dtype=np.float32)
    with build.runner() as r:
        got = r.infer(x)
    np.testing.assert_allclose(got, ort_features(res["onnx"], x), rtol=1e-5, atol=1e-5)
    ort_build = Build(res["build_dir"], backend="onnxruntime", threads=2)  # the same folder on ONNX Runtime
    assert ort_build.artifact_path().name.endswith(".onnx")
    if precision == "int8":  # ONNX Runtime runs its own (uint8) encoding, which the parser would refuse
        assert ort_build.artifact_path() != build.root / m["files"]["onnx_int8_tensorrt"]["path"]
        with pytest.raises(RunnerError, match=r"signed int8 Q/DQ only"):
            build_plan(ort_build.artifact_path(), tmp_path / "u8.plan", input_size=64)


def test_onnxruntime_build_has_no_plan(tiny_engine, fake_gpu):
    from engine.build_folder import Build

    res, _ = tiny_engine
    with pytest.raises(RunnerError, match=r"built for onnxruntime, it has no TensorRT plan"):
        Build(res["build_dir"], backend="tensorrt").runner()
