"""kernels/projection.py, kernels/opu_matrix.py and kernels/lightonml.py: lightonml equivalence,
output statistics, reproducibility, saved states, bad inputs. d = input bits, k = components."""
import sys
import warnings

import numpy as np
import pytest

from kernels.lightonml import LightOnOPU
from kernels.matrix_cache import MatrixCache
from kernels.opu_matrix import Int8GemmWarning
from kernels.projection import SimulatedOPU
from kernels.xp import to_host


def bits(n, d, density=0.5, seed=0):
    return (np.random.default_rng(seed).random((n, d)) < density).astype(np.uint8)


def require_lightonml():
    """lightonml is the only external reference for the simulation, and `make install` installs
    it: a broken install fails here instead of turning the comparison into a skip."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import lightonml  # noqa: F401
    except ImportError as e:
        pytest.fail(f'lightonml does not import ({e}): install the "opu" extra (make install-opu, i.e. '
                    'pip install --no-deps lightonml==1.4.3 plus numexpr attrs requests "setuptools<81")')


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("block_size", [None, 16])
def test_lightonml_matrix_mode_equals_lightonml(block_size):
    require_lightonml()
    from lightonml import OPU
    from lightonml.internal.simulated_device import SimulatedOpuDevice

    x = bits(30, 300)
    ours = SimulatedOPU(70, seed=3, mode="lightonml-matrix", matrix_dtype="float32", block_size=block_size)
    dev = SimulatedOpuDevice()
    dev.build_random_matrix(300, 70, 3)
    opu = OPU(n_components=70, opu_device=dev, max_n_features=300, disable_pbar=True)
    opu.fit1d(n_features=300)
    expect = np.asarray(opu.transform(x))
    got = ours.fit_transform(x)
    np.testing.assert_array_equal(ours.random_matrix, dev.random_matrix)  # the very same matrix
    np.testing.assert_allclose(got, expect, rtol=2e-5, atol=1e-6)  # complex vs two real GEMMs
    lo = LightOnOPU(70, seed=3, simulated=True).fit(300)
    np.testing.assert_allclose(lo.transform(x), expect, rtol=1e-6)


@pytest.mark.parametrize("matrix_dtype", ["int8", "float32", "bfloat16", "float16"])
def test_fast_mode_statistics_match_theory(matrix_dtype, xp):
    # x in {0,1}^d: xA ~ N(0, |x|_1/d) per component, so y = (xA)^2 + (xB)^2 is exponential
    # with mean 2|x|_1/d and variance mean^2. int8 (the default) is a sigma/16 grid: its variance
    # is 1 + 1/(12*16^2) of the Gaussian's, far inside these bounds.
    d, m = 1024, 4000
    x = np.concatenate([bits(3, d, 0.5), bits(3, d, 0.1, seed=1)])
    y = SimulatedOPU(m, seed=5, matrix_dtype=matrix_dtype).fit_transform(xp.asarray(x))
    assert isinstance(y, xp.ndarray)
    y = to_host(y)
    assert y.dtype == np.float32 and y.shape == (6, m) and (y >= 0).all()
    mean = 2 * x.sum(1) / d
    np.testing.assert_allclose(y.mean(1), mean, rtol=0.06)  # 1/sqrt(m) = 1.6% std error
    np.testing.assert_allclose(y.var(1), mean ** 2, rtol=0.2)


@pytest.mark.parametrize("matrix_dtype", ["int8", "float32"])
def test_seed_reproducible_and_block_size_independent(matrix_dtype):
    x = bits(20, 200)
    a = SimulatedOPU(90, seed=7, matrix_dtype=matrix_dtype, block_size=7).fit_transform(x)
    b = SimulatedOPU(90, seed=7, matrix_dtype=matrix_dtype, block_size=64).fit_transform(x)
    c = SimulatedOPU(90, seed=7, matrix_dtype=matrix_dtype, cache=False).fit_transform(x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    prefix = SimulatedOPU(40, seed=7, matrix_dtype=matrix_dtype).fit_transform(x)
    np.testing.assert_array_equal(prefix, a[:, :40])  # component c's stream depends on c only
    assert not np.allclose(a, SimulatedOPU(90, seed=8, matrix_dtype=matrix_dtype).fit_transform(x))


def test_train_and_test_see_the_same_projection():
    # (block sizes: test_seed_reproducible_and_block_size_independent)
    opu = SimulatedOPU(50, seed=1).fit(128)
    train, test = bits(30, 128), bits(10, 128, seed=9)
    both = SimulatedOPU(50, seed=1).fit_transform(np.concatenate([train, test]))
    np.testing.assert_array_equal(np.concatenate([opu.transform(train), opu.transform(test)]), both)
    again = SimulatedOPU.from_dict(opu.to_dict())
    np.testing.assert_array_equal(again.transform(test), both[30:])


# A SimulatedOPU state as model files written before the mode rename hold it ("lightonml" was the
# mode's name; it is now only the projection kind, LightOnOPU), and a fast-mode one.
OLD_LIGHTONML_STATE = {"kind": "SimulatedOPU", "n_components": 70, "seed": 3, "matrix_dtype": "float32",
                       "block_size": None, "camera_bits": None, "camera_max": None, "mode": "lightonml",
                       "cache": True, "n_features": 300, "rng": "numpy.RandomState(seed).normal float64->float32"}
FAST_STATE = {"kind": "SimulatedOPU", "n_components": 70, "seed": 3, "matrix_dtype": "int8", "block_size": 16,
              "camera_bits": 8, "camera_max": 5.4550089836120605, "mode": "fast", "cache": True, "n_features": 300,
              "rng": "torch.Generator(SeedSequence(seed,spawn_key=(component,)).generate_state(1,uint64))"
                     ".normal_(2,k) f32 [re, im]"}


def test_old_lightonml_mode_state_loads_as_lightonml_matrix():
    old = SimulatedOPU.from_dict(OLD_LIGHTONML_STATE)
    new = SimulatedOPU(70, seed=3, mode="lightonml-matrix", matrix_dtype="float32").fit(300)
    assert old.mode == "lightonml-matrix"
    assert old.to_dict() == dict(OLD_LIGHTONML_STATE, mode="lightonml-matrix") == new.to_dict()
    x = bits(12, 300)
    np.testing.assert_array_equal(old.transform(x), new.transform(x))
    with pytest.raises(ValueError, match=r"mode 'lightonml' is now spelled 'lightonml-matrix'.*LightOnOPU"):
        SimulatedOPU(70, mode="lightonml", matrix_dtype="float32")


def test_saved_state_and_cache_key_are_unchanged():
    """What enters model files and cache keys is frozen: this state (as older code wrote it)
    round-trips unchanged, and its matrix keeps its cache key."""
    opu = SimulatedOPU.from_dict(FAST_STATE)
    assert opu.to_dict() == FAST_STATE
    assert MatrixCache.key(opu._cache_params(300)) == "19a3a00390ed3df5c3063fd2cbb1392c"


def test_bfloat16_matrix_is_close_to_float32():
    x = bits(10, 512)
    a = SimulatedOPU(64, seed=2, matrix_dtype="float32").fit_transform(x)
    b = SimulatedOPU(64, seed=2, matrix_dtype="bfloat16").fit_transform(x)
    assert np.abs(a - b).max() < 0.02 * a.max()


def test_camera_quantization_range_and_frozen_scale():
    opu = SimulatedOPU(300, seed=0, camera_bits=8)
    y = opu.fit_transform(bits(40, 256))
    assert y.dtype == np.float32 and y.min() >= 0 and y.max() == 255
    np.testing.assert_array_equal(y, np.rint(y))
    scale = opu.camera_max
    y2 = opu.transform(bits(5, 256, density=0.05, seed=3))  # a dim batch keeps the same scale
    assert opu.camera_max == scale and y2.max() < 255
    assert SimulatedOPU.from_dict(opu.to_dict()).camera_max == scale


@pytest.mark.parametrize("bad", [0, -5, 2.5])
def test_bad_n_components(bad):
    with pytest.raises(ValueError, match="n_components must be a positive integer"):
        SimulatedOPU(bad)


def test_absurd_size_states_bytes_needed():
    opu = SimulatedOPU(10 ** 9, matrix_dtype="bfloat16")
    with pytest.raises(MemoryError, match=r"would need [\d,]+ bytes") as e:
        opu.fit(50176)
    # the fixes offered are ones that need less: int8 (half of bfloat16), no cache, fewer rows
    assert "matrix_dtype='int8'" in str(e.value) and "cache=False" in str(e.value)
    assert "'bfloat16'" not in str(e.value).split("To need less:")[1]
    assert opu.memory_bytes(50176, 1) > SimulatedOPU(10 ** 9).memory_bytes(50176, 1) \
        > SimulatedOPU(10 ** 9, cache=False).memory_bytes(50176, 1)


def test_non_binary_input_rejected():
    opu = SimulatedOPU(8).fit(4)
    with pytest.raises(ValueError, match="must be 0/1 bits"):
        opu.transform(np.array([[0, 2, 1, 0]], dtype=np.uint8))
    with pytest.raises(ValueError, match="fitted on 4 features, got 5"):
        opu.transform(np.zeros((1, 5), np.uint8))


def test_lightonml_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightonml", None)
    with pytest.raises(ImportError, match=r'"opu" extra: pip install --no-deps lightonml==1.4.3'):
        LightOnOPU(10)


def test_fast_mode_stream_is_pinned():
    # Saved models store only the seed: if torch's CPU generator (or NumPy's SeedSequence, which
    # seeds it per component) ever changes its stream, old models would silently get another
    # matrix. These values pin RNG_SCHEME (R = re + i im, std 1/sqrt(3)).
    R = SimulatedOPU(2, seed=0, matrix_dtype="float32").fit(3).random_matrix
    np.testing.assert_allclose(R.real, [[-0.3820374, -0.17255852], [0.31417727, -0.068106785],
                                        [0.23376109, 0.045790117]], rtol=1e-6)
    np.testing.assert_allclose(R.imag, [[0.6060218, -0.007087405], [0.9977205, -0.030956784],
                                        [0.13194755, -0.2168051]], rtol=1e-6)


def test_int8_matrix_is_exact_against_its_own_matrix_and_tracks_float32(xp):
    """int8 storage: y = |x R|^2 for R = round(16 z)/16/sqrt(d) exactly (int32 GEMM), and R is the
    float32 matrix of the same seed up to the sigma/16 grid."""
    rng = np.random.default_rng(0)
    x = (rng.random((40, 300)) < 0.5).astype(np.uint8)
    q = SimulatedOPU(48, seed=3, matrix_dtype="int8").fit(300)
    y = to_host(q.transform(xp.asarray(x)))
    R = q.random_matrix.astype(np.complex128)
    np.testing.assert_allclose(y, np.abs(x.astype(np.float64) @ R) ** 2, rtol=1e-5, atol=1e-6 * y.max())
    np.testing.assert_array_equal(to_host(q.transform(xp.asarray(x[:3]))), y[:3])  # few rows: same numbers
    f = SimulatedOPU(48, seed=3, matrix_dtype="float32").fit(300)
    d = R - f.random_matrix
    assert max(np.abs(d.real).max(), np.abs(d.imag).max()) <= 0.5 / 16 / np.sqrt(300) + 1e-7
    assert np.corrcoef(f.transform(x).ravel(), y.ravel())[0, 1] > 0.999


def test_int8_gemm_without_torch_int_mm_warns_and_gives_the_same_numbers(monkeypatch):
    """torch._int_mm is private: without it (AttributeError) the float32 fallback gives the very
    same numbers and says why; a RuntimeError (shapes its kernel refuses) falls back silently."""
    import torch

    x = bits(40, 300)
    ref = SimulatedOPU(48, seed=3).fit_transform(x)
    monkeypatch.delattr(torch, "_int_mm")
    with pytest.warns(Int8GemmWarning, match=r"no torch\._int_mm.*float32 instead \(same numbers"):
        np.testing.assert_array_equal(SimulatedOPU(48, seed=3).fit_transform(x), ref)

    def refuse(*a):
        raise RuntimeError("shape not supported")

    monkeypatch.setattr(torch, "_int_mm", refuse, raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_array_equal(SimulatedOPU(48, seed=3).fit_transform(x), ref)


def test_threads_default_without_sched_getaffinity(monkeypatch):
    import os

    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS and Windows have none
    assert SimulatedOPU(8).n_threads == (os.cpu_count() or 1)
