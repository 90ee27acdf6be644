"""The CLI's contract with its user: numbers refused where they are parsed (flag, range, value;
exit 2), before any model is built."""
from __future__ import annotations

import pytest

from engine import cli


@pytest.mark.parametrize("argv, message", [
    (["engines", "--input-size", "0"], "argument --input-size: expected an integer >= 32, got 0"),
    (["engines", "--input-size", "-5"], "argument --input-size: expected an integer >= 32, got -5"),
    (["engines", "--model", "densenet121", "--input-size", "7"], "argument --input-size: expected an integer >= 32, got 7"),
    (["cuts", "densenet121", "--input-size", "7"], "argument --input-size: expected an integer >= 32, got 7"),
    (["engines", "--seed", "-1"], "argument --seed: expected an integer in 0..4294967295, got -1"),
    (["evaluate", "--model", "m", "--seed", "-1"], "argument --seed: expected an integer in 0..4294967295, got -1"),
    (["fit", "--workers", "-1"], "argument --workers: expected an integer >= 0, got -1"),
    (["featurize", "--out", "s", "--threads", "-1"], "argument --threads: expected an integer >= 1, got -1"),
    (["fit", "--n-components", "0"], "argument --n-components: expected an integer >= 1, got 0"),
    (["fit", "--test-fraction", "1.5"], "argument --test-fraction: expected a number in [0, 1), got 1.5"),
    (["engines", "--batch-size", "x"], "argument --batch-size: expected an integer >= 1, got 'x'"),
    (["report", "--input-size", "8"], "argument --input-size: expected an integer >= 32, got 8"),
])
def test_numbers_are_checked_where_they_are_parsed(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"otl {argv[0]}: error: {message}"


@pytest.mark.parametrize("field, value, message", [
    ("input_size", 0, "input_size: expected an integer >= 32, got 0"),
    ("seed", -1, "seed: expected an integer in 0..4294967295, got -1"),
    ("threads", -1, "threads: expected an integer >= 1, got -1"),
    ("batch_size", 0, "batch_size: expected an integer >= 1, got 0"),
])
def test_build_config_checks_the_same_numbers(tmp_path, field, value, message):
    from engine.build import BuildConfig, make_build
    from engine.checks import NumberError

    with pytest.raises(NumberError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_build(BuildConfig(model="resnet18", weights="random", out=str(tmp_path / "b"), **{field: value}))
    assert not (tmp_path / "b").exists()  # refused before anything was written
