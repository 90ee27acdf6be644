"""JSON calibration cache (key invalidation, files of the old format) and TensorRT's text cache."""
import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from calibration.result import CALIBRATION_VERSION, CalibrationResult, load_cache, save_cache
from calibration.scales import MIN_AMAX, quantize_weights, weight_scales
from calibration.trtcache import format_trt_cache, parse_trt_cache, read_trt_cache, write_trt_cache


def _result():
    return CalibrationResult(amax={"x": 2.5, "relu_1": 0.75}, nonneg={"x": False, "relu_1": True},
                             max_abs={"x": 3.0, "relu_1": 1.0}, method="entropy", num_images=8, n_tensors=2,
                             seconds=0.1)


KEY = {"weights": "abc", "cut": "denseblock3", "input_size": 224, "preprocessing": "imagenet",
       "images": "sha-of-list", "method": "entropy"}


def test_cache_round_trip(tmp_path):
    p = save_cache(tmp_path / "c.json", _result(), KEY)
    got = load_cache(p, dict(KEY))
    assert got.amax == {"x": 2.5, "relu_1": 0.75} and got.nonneg["relu_1"] is True
    assert got.key["calibration_version"] == CALIBRATION_VERSION


OLD_FORMAT = Path(__file__).parent / "fixtures" / "calibration_thresholds_format.json"
OLD_KEY = {"model": "tiny", "weights": "random-0", "input_size": 16, "note": "written before the amax rename",
           "method": "entropy", "num_images": 16}


def test_cache_written_before_the_amax_rename_loads(tmp_path):
    """A calibration.json whose result holds the clip values as "thresholds" (written by earlier
    code, same calibration version) is used as is; saving it again writes "amax"."""
    old = json.loads(OLD_FORMAT.read_text())["result"]
    assert "thresholds" in old and "amax" not in old
    got = load_cache(shutil.copy(OLD_FORMAT, tmp_path / "c.json"), OLD_KEY)
    assert got is not None and got.amax == old["thresholds"] and len(got.amax) == got.n_tensors == 6
    assert got.candidates == old["candidates"] and got.channel_mean == old["channel_mean"]
    assert all(got.amax[t] == c["entropy"] for t, c in got.candidates.items())
    new = json.loads(save_cache(tmp_path / "new.json", got, OLD_KEY).read_text())["result"]
    assert new["amax"] == old["thresholds"] and "thresholds" not in new
    assert load_cache(tmp_path / "new.json", OLD_KEY).amax == got.amax


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
    assert s[0] == pytest.approx(0.01) and s[1] == pytest.approx(0.5 / 127)
    assert s[2] == np.float32(MIN_AMAX / 127)  # an all-zero channel: the floor, never 0
    q, _ = quantize_weights(w)
    assert q.dtype == np.int8 and q[0].max() == 127 and q[1, 0, 0, 0] == -127 and not q[2].any()
