"""kernels/encode.py: binarization edge cases, bit packing, encoder specs."""
import numpy as np
import pytest

from kernels.encode import Encoder, binarize, packbits, parse_encoder, unpackbits
from kernels.xp import to_host


def test_sign_and_threshold(xp):
    x = xp.asarray(np.array([[-1.0, 0.0, 1e-30, 0.5, 0.7, np.nan, np.inf, -np.inf]], dtype=np.float32))
    np.testing.assert_array_equal(to_host(binarize(x)), [[0, 0, 1, 1, 1, 0, 1, 0]])
    np.testing.assert_array_equal(to_host(binarize(x, "threshold", 0.5)), [[0, 0, 0, 0, 1, 0, 1, 0]])
    assert binarize(x).dtype == np.uint8 and isinstance(binarize(x), xp.ndarray)
    assert binarize(xp.zeros((0, 3))).shape == (0, 3)
    np.testing.assert_array_equal(to_host(binarize(xp.asarray([True, False]))), [1, 0])


def test_bad_methods():
    with pytest.raises(ValueError, match=r"unknown method 'median'; expected one of \('sign', 'threshold'\)"):
        binarize(np.ones(3), "median")
    with pytest.raises(ValueError, match="'sign' takes no threshold"):
        binarize(np.ones(3), "sign", 0.5)


@pytest.mark.parametrize("d", [1, 7, 8, 9, 64, 100])
def test_pack_unpack_round_trip(d, xp):
    b = (np.random.default_rng(d).random((5, d)) < 0.5).astype(np.uint8)
    p = packbits(xp.asarray(b))
    assert p.dtype == np.uint8 and p.shape == (5, -(-d // 8)) and isinstance(p, xp.ndarray)
    np.testing.assert_array_equal(to_host(p), np.packbits(b, axis=1))  # NumPy's layout on every module
    np.testing.assert_array_equal(to_host(unpackbits(p, d)), b)


def test_pack_is_big_endian_and_checks():
    np.testing.assert_array_equal(packbits(np.array([[1, 0, 0, 0, 0, 0, 0, 1, 1]], np.uint8)), [[129, 128]])
    with pytest.raises(ValueError, match="expected a 2-D"):
        packbits(np.ones(8, np.uint8))
    with pytest.raises(ValueError, match=r"d=17 does not fit 2 bytes per row \(expected 9..16\)"):
        unpackbits(np.zeros((1, 2), np.uint8), 17)


def test_parse_encoder():
    assert parse_encoder("sign") == Encoder("sign", 0.0)
    e = parse_encoder("threshold:0.5")
    assert e == Encoder("threshold", 0.5) and e.spec == "threshold:0.5"
    assert Encoder.from_dict(e.to_dict()) == e
    np.testing.assert_array_equal(e(np.array([0.4, 0.6])), [0, 1])
    with pytest.raises(AttributeError):
        e.threshold = 1.0  # frozen: saved with the model, never mutated


@pytest.mark.parametrize("spec,msg", [
    ("plain_th", "unknown encoder spec 'plain_th'; valid: \"sign\", \"threshold:T\" (a number), \"threshold:median\""),
    ("threshold:abc", "threshold 'abc' is neither a number nor 'median'"),
    ("thresholds:0", "Q must be >= 1"),
    ("thresholds:-2", "Q must be >= 1"),
    ("thresholds:x", "Q 'x' is not an integer"),
    ("threshold", "unknown encoder spec 'threshold'"),
    ("threshold:nan", "threshold must be finite"),
    ("sign:1", "unknown encoder spec 'sign:1'"),
])
def test_parse_encoder_errors(spec, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        parse_encoder(spec)
