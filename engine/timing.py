"""Timing around calls, never returned from stage functions: `with timings("stage"): ...`."""
from __future__ import annotations

import contextlib
import time


class Timings:
    """Accumulates wall-clock seconds per stage name; a stage timed twice adds up."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def add(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds

    def as_dict(self, digits: int = 4) -> dict:
        return {k: round(v, digits) for k, v in self.seconds.items()}


def timed_items(iterable, t: Timings, stage: str):
    """Yield from `iterable`, timing only the production of each item (not the consumer's work)."""
    it = iter(iterable)
    while True:
        with t(stage):
            item = next(it, None)
        if item is None:
            return
        yield item
