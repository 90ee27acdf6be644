"""Range checks of the numbers a user passes, shared by the CLI's argument types (engine/cli/args.py)
and the API's configs (BuildConfig, ...), so both refuse the same values in the same words, before
any work starts."""
from __future__ import annotations

import math

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
