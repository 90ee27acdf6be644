"""The one rule for progress bars: `progress=None` shows one when stderr is a terminal; True and
False force it on or off (the CLI's --quiet passes False).

In kernels/ because every layer draws bars (engine's batches, calibration's histograms and
refinement) and kernels/ is the bottom of the dependency order.
"""
from __future__ import annotations

import sys


def show_progress(progress: bool | None) -> bool:
    """Whether to draw a bar: `progress` when given, else whether stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else bool(progress)


def progress_bar(progress: bool | None, **tqdm_args):
    """A tqdm bar (disabled, drawing nothing, when show_progress(progress) is False); use it as a
    context manager. tqdm_args: total, desc, unit, ..."""
    from tqdm import tqdm

    return tqdm(disable=not show_progress(progress), **tqdm_args)
