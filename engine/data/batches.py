"""Parallel batching: a dataset -> float32 (B, 3, H, W) batches in dataset order, decoded in workers.

Unreadable files are dropped and reported once at the end (a DataWarning), or raise DataError when
the dataset is strict. After a pass, dataset.skipped holds the reasons ("path: why"), and
skipped_images() turns them into the {"count", "first"} record that commands put in their JSON.
"""
from __future__ import annotations

import functools
import os
import warnings
from typing import Iterator

import numpy as np

from engine.data.datasets import ImageDataset
from engine.data.errors import NAMED_SKIPPED, DataError, DataWarning

MAX_DEFAULT_WORKERS = 4


def default_workers() -> int:
    """min(4, the CPUs this process may use): decoding rarely scales past a few processes."""
    if hasattr(os, "sched_getaffinity"):  # Linux; not on macOS or Windows
        return min(MAX_DEFAULT_WORKERS, len(os.sched_getaffinity(0)))
    return min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)


def skipped_images(*reasons: list[str]) -> dict:
    """{"count": n, "first": the first few "path: why"} over lists of skip reasons (e.g. a load's
    Splits.skipped and a pass's dataset.skipped): what JSON summaries report as skipped_images."""
    every = [r for rs in reasons for r in rs]
    return {"count": len(every), "first": every[:NAMED_SKIPPED]}


def _warn_skipped(skipped: list[str]) -> None:
    n = len(skipped)
    named = "; ".join(skipped[:NAMED_SKIPPED]) + ("; ..." if n > NAMED_SKIPPED else "")
    warnings.warn(f"skipped {n} unreadable image{'s' * (n > 1)} (first: {named}); --strict makes this an error",
                  DataWarning, stacklevel=3)


def _load_batch(dataset: ImageDataset, indices: list[int]):
    """Runs in a worker: (x tensor or None, y, kept indices, reasons for the dropped ones)."""
    import torch

    try:
        loaded = [(i, *dataset.load(i)) for i in indices]
    except DataError as e:  # strict: re-raised by iter_batches, without the worker's traceback wrapper
        return e
    kept = [(i, x) for i, x, _ in loaded if x is not None]
    bad = [reason for _, x, reason in loaded if x is None]
    if not kept:
        return None, None, [], bad
    # A tensor crosses the worker queue through shared memory; a NumPy array would be pickled.
    x = torch.from_numpy(np.stack([x for _, x in kept]))
    idx = [i for i, _ in kept]
    return x, dataset.labels[idx], idx, bad


def iter_batches(dataset: ImageDataset, batch_size: int, workers: int | None = None,
                 progress: bool | None = None, desc: str = "") -> Iterator[tuple[np.ndarray, np.ndarray, list[int]]]:
    """Yield (x float32 (B, 3, H, W), y int64 (B,), dataset indices) in dataset order.

    Decoding runs in `workers` processes (0: in this process; default default_workers()), at most
    2 batches per worker in flight. Unreadable images are dropped (B may shrink; a batch with
    nothing left is not yielded), counted in one DataWarning after the last batch and listed in
    dataset.skipped ("path: why", reset by each pass); with dataset.strict they raise DataError.
    Progress bar: on a TTY stderr, or as `progress` says.
    """
    from torch.utils.data import DataLoader

    from kernels.progress import progress_bar

    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    if workers is None:
        workers = default_workers()
    # The DataLoader batches indices; decoding happens in the collate function, in the workers.
    loader = DataLoader(range(len(dataset)), batch_size=batch_size, num_workers=workers,
                        collate_fn=functools.partial(_load_batch, dataset), prefetch_factor=2 if workers else None)
    skipped: list[str] = []
    dataset.skipped = skipped  # a new list per pass: datasets made by select() do not share it
    with progress_bar(progress, total=len(dataset), desc=desc, unit="img", dynamic_ncols=True) as bar:
        for batch in loader:
            if isinstance(batch, DataError):
                raise batch
            x, y, idx, bad = batch
            skipped += bad
            bar.update(len(idx) + len(bad))
            if idx:
                yield x.numpy(), y, idx
    if skipped:
        _warn_skipped(skipped)
