"""kernels/projection.py: lightonml equivalence, output statistics, reproducibility, bad inputs."""
import sys
import warnings

import numpy as np
import pytest

from kernels.projection import LightOnOPU, SimulatedOPU


def bits(n, k, density=0.5, seed=0):
    return (np.random.default_rng(seed).random((n, k)) < density).astype(np.uint8)


def lightonml_or_skip():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import lightonml  # noqa: F401
    except ImportError:
        pytest.skip('lightonml not importable: install the "opu" extra '
                    '(pip install --no-deps lightonml==1.4.3; CI does)')


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("block_size", [None, 16])
def test_lightonml_mode_equals_lightonml(block_size):
    lightonml_or_skip()
    from lightonml import OPU
    from lightonml.internal.simulated_device import SimulatedOpuDevice

    x = bits(30, 300)
    ours = SimulatedOPU(70, seed=3, mode="lightonml", matrix_dtype="float32", block_size=block_size)
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


@pytest.mark.parametrize("matrix_dtype", ["float32", "bfloat16"])
def test_fast_mode_statistics_match_theory(matrix_dtype):
    # x in {0,1}^k: xA ~ N(0, |x|_1/k) per component, so y = (xA)^2 + (xB)^2 is exponential
    # with mean 2|x|_1/k and variance mean^2.
    k, m = 1024, 4000
    x = np.concatenate([bits(3, k, 0.5), bits(3, k, 0.1, seed=1)])
    y = SimulatedOPU(m, seed=5, matrix_dtype=matrix_dtype).fit_transform(x)
    assert y.dtype == np.float32 and y.shape == (6, m) and (y >= 0).all()
    mean = 2 * x.sum(1) / k
    np.testing.assert_allclose(y.mean(1), mean, rtol=0.06)  # 1/sqrt(m) = 1.6% std error
    np.testing.assert_allclose(y.var(1), mean ** 2, rtol=0.2)


def test_seed_reproducible_and_block_size_independent():
    x = bits(20, 200)
    a = SimulatedOPU(90, seed=7, matrix_dtype="float32", block_size=7).fit_transform(x)
    b = SimulatedOPU(90, seed=7, matrix_dtype="float32", block_size=64).fit_transform(x)
    c = SimulatedOPU(90, seed=7, matrix_dtype="float32", cache=False).fit_transform(x)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)
    prefix = SimulatedOPU(40, seed=7, matrix_dtype="float32").fit_transform(x)
    np.testing.assert_array_equal(prefix, a[:, :40])  # component c's stream depends on c only
    assert not np.allclose(a, SimulatedOPU(90, seed=8, matrix_dtype="float32").fit_transform(x))


def test_train_and_test_see_the_same_projection():
    opu = SimulatedOPU(50, seed=1, block_size=16).fit(128)
    train, test = bits(30, 128), bits(10, 128, seed=9)
    both = SimulatedOPU(50, seed=1).fit_transform(np.concatenate([train, test]))
    np.testing.assert_array_equal(np.concatenate([opu.transform(train), opu.transform(test)]), both)
    again = SimulatedOPU.from_dict(opu.to_dict())
    np.testing.assert_array_equal(again.transform(test), both[30:])


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
    with pytest.raises(MemoryError, match=r"would need [\d,]+ bytes"):
        opu.fit(50176)


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
    # Saved models store only the seed: if NumPy ever changes this stream, old models would
    # silently get another matrix. These values pin RNG_SCHEME (R = re + i im, std 1/sqrt(3)).
    R = SimulatedOPU(2, seed=0, matrix_dtype="float32").fit(3).random_matrix
    np.testing.assert_allclose(R.real, [[-0.3820374, -0.17255852], [0.31417727, -0.068106785],
                                        [0.23376109, 0.045790117]], rtol=1e-6)
    np.testing.assert_allclose(R.imag, [[0.6060218, -0.007087405], [0.9977205, -0.030956784],
                                        [0.13194755, -0.2168051]], rtol=1e-6)


def test_int8_matrix_is_exact_against_its_own_matrix_and_tracks_float32():
    """int8 storage: y = |x R|^2 for R = round(16 z)/16/sqrt(k) exactly (int32 GEMM), and R is the
    float32 matrix of the same seed up to the sigma/16 grid."""
    rng = np.random.default_rng(0)
    x = (rng.random((40, 300)) < 0.5).astype(np.uint8)
    q = SimulatedOPU(48, seed=3, matrix_dtype="int8").fit(300)
    y = q.transform(x)
    R = q.random_matrix.astype(np.complex128)
    np.testing.assert_allclose(y, np.abs(x.astype(np.float64) @ R) ** 2, rtol=1e-5, atol=1e-6 * y.max())
    np.testing.assert_array_equal(q.transform(x[:3]), y[:3])  # few rows: same numbers
    f = SimulatedOPU(48, seed=3, matrix_dtype="float32").fit(300)
    d = R - f.random_matrix
    assert max(np.abs(d.real).max(), np.abs(d.imag).max()) <= 0.5 / 16 / np.sqrt(300) + 1e-7
    assert np.corrcoef(f.transform(x).ravel(), y.ravel())[0, 1] > 0.999
