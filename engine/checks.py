"""Checks of what a user passes, before any work starts: numbers in range (shared by the CLI's
argument types in engine/cli/args.py and the API's configs, so both refuse the same values in the
same words) and what kind of file a path is (for messages that say what was given instead)."""
from __future__ import annotations

import math
import zipfile
from pathlib import Path

MIN_INPUT_SIZE = 32  # the smallest square input every backbone's full feature extractor maps to >= 1x1
MAX_SEED = 2**32 - 1  # NumPy's RandomState (the lightonml matrix) takes seeds below 2**32


class NumberError(ValueError):
    """A number outside its valid range: names the flag, the range and the value."""


def int_problem(value, minimum: int, maximum: int | None = None) -> str | None:
    """What is wrong with `value` as an integer in [minimum, maximum], or None when nothing is."""
    valid = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum \
        and (maximum is None or value <= maximum)
    return None if ok else f"expected an integer {valid}, got {value!r}"


def fraction_problem(value) -> str | None:
    """What is wrong with `value` as a fraction in [0, 1), or None when nothing is."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value < 1
    return None if ok else f"expected a number in [0, 1), got {value!r}"


def check_int(name: str, value, minimum: int, maximum: int | None = None) -> None:
    """NumberError naming `name` unless `value` is an integer in [minimum, maximum]."""
    problem = int_problem(value, minimum, maximum)
    if problem:
        raise NumberError(f"{name}: {problem}")


def check_optional_int(name: str, value, minimum: int, maximum: int | None = None) -> None:
    """None (the default) passes; anything else as check_int."""
    if value is not None:
        check_int(name, value, minimum, maximum)


def check_fraction(name: str, value) -> None:
    problem = fraction_problem(value)
    if problem:
        raise NumberError(f"{name}: {problem}")


def check_run_numbers(cfg) -> None:
    """The numbers run configs share (FitConfig, FeaturizeConfig, EvaluateConfig, PredictConfig),
    each checked when the config has it and it is set: the CLI's ranges, for API users."""
    ranges = {"seed": (0, MAX_SEED), "batch_size": (1, None), "workers": (0, None), "threads": (1, None)}
    for name, (least, most) in ranges.items():
        check_optional_int(name, getattr(cfg, name, None), least, most)
    for name in ("test_fraction", "validation_fraction"):
        if getattr(cfg, name, None) is not None:
            check_fraction(name, getattr(cfg, name))


def file_kind(path) -> str:
    """What `path` looks like, for an error message: "a directory", "a zip archive", "a damaged zip
    archive", "a pickle", "a text file", "an empty file" or "binary data that is neither zip nor pickle"."""
    p = Path(path)
    if p.is_dir():
        return "a directory"
    if zipfile.is_zipfile(p):
        return "a zip archive"
    with p.open("rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    if head[:4] == b"PK\x03\x04":
        return "a damaged zip archive"
    if head[:1] == b"\x80":  # pickle protocol 2+ (torch.save's legacy format starts so)
        return "a pickle"
    try:
        head.decode("utf-8")
        return "a text file"
    except UnicodeDecodeError:
        return "binary data that is neither zip nor pickle"
