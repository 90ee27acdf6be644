"""JSON calibration cache (key invalidation) and TensorRT's text cache."""
import struct

import numpy as np
import pytest

from calibration.scales import (CALIBRATION_VERSION, CalibrationResult, load_cache, quantize_weights,
                                save_cache, weight_scales)
from calibration.trtcache import format_trt_cache, parse_trt_cache, read_trt_cache, write_trt_cache


def _result():
    return CalibrationResult(thresholds={"x": 2.5, "relu_1": 0.75}, nonneg={"x": False, "relu_1": True},
                             max_abs={"x": 3.0, "relu_1": 1.0}, method="entropy", num_images=8, n_tensors=2,
                             seconds=0.1)


KEY = {"weights": "abc", "cut": "denseblock3", "input_size": 224, "preprocessing": "imagenet",
       "images": "sha-of-list", "method": "entropy"}


def test_cache_round_trip(tmp_path):
    p = save_cache(tmp_path / "c.json", _result(), KEY)
    got = load_cache(p, dict(KEY))
    assert got.thresholds == {"x": 2.5, "relu_1": 0.75} and got.nonneg["relu_1"] is True
    assert got.key["calibration_version"] == CALIBRATION_VERSION


def test_changed_key_returns_none_with_reason(tmp_path):
    p = save_cache(tmp_path / "c.json", _result(), KEY)
    with pytest.warns(UserWarning, match=r"stale \(cut: cached 'denseblock3' != wanted 'denseblock2'\)"):
        assert load_cache(p, dict(KEY, cut="denseblock2")) is None
    assert load_cache(tmp_path / "missing.json", KEY) is None
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.warns(UserWarning, match="unreadable"):
        assert load_cache(tmp_path / "bad.json", KEY) is None


def test_trt_cache_round_trip(tmp_path):
    scales = {"images": 2.5 / 127, "relu_1": 0.75 / 127, "0.conv/x:0": 1e-6}
    p = write_trt_cache(tmp_path / "cal.cache", scales, trt_version=8601)
    text = p.read_text()
    assert text.splitlines()[0] == "TRT-8601-EntropyCalibration2"
    # big-endian IEEE-754 bits, 8 hex digits
    assert f"images: {struct.unpack('>I', struct.pack('>f', 2.5 / 127))[0]:08x}" in text
    version, algo, got = read_trt_cache(p)
    assert (version, algo) == (8601, "EntropyCalibration2")
    for k, v in scales.items():
        assert got[k] == np.float32(v)
    assert parse_trt_cache(format_trt_cache({"a": 1.0}))[2] == {"a": 1.0}
    assert "a: 3f800000" in format_trt_cache({"a": 1.0})
    with pytest.raises(ValueError, match="not a TensorRT calibration cache"):
        parse_trt_cache("hello\n")


def test_weight_scales_per_channel():
    w = np.zeros((3, 2, 3, 3), np.float32)
    w[0] = 1.27
    w[1, 0, 0, 0] = -0.5
    s = weight_scales(w)
    assert s[0] == pytest.approx(0.01) and s[1] == pytest.approx(0.5 / 127) and s[2] > 0
    q, _ = quantize_weights(w)
    assert q.dtype == np.int8 and q[0].max() == 127 and q[1, 0, 0, 0] == -127 and not q[2].any()
