"""The backprop baseline (the reference's backprop.py): the same truncated backbone + global average
pool + a linear head, every parameter trained with cross-entropy and Adam, on the same train/test
split and preprocessing as the gradient-free variants.

Images are decoded once and kept in memory (decode_s, reported apart), shuffled each epoch with a
seeded generator; training_s after epoch e is the optimizer's time up to it (forward, backward,
step), test scoring excluded. It trains on the GPU when torch sees one, on the CPU otherwise. The
gradient-free training time it is compared with includes its own image decoding, so the time
ratio errs in backprop's favour.
"""
from __future__ import annotations

import os
import time

import numpy as np

from kernels.progress import progress_bar

MAX_DECODED_BYTES_SHARE = 0.5  # refuse to hold more than half the free memory in decoded images


def decode(dataset, what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (n, 3, H, W), labels int64) of a dataset's readable images."""
    import psutil

    x0, _ = dataset.load(0) if len(dataset) else (None, None)
    if x0 is not None:
        need = len(dataset) * x0.nbytes
        free = psutil.virtual_memory().available
        if need > MAX_DECODED_BYTES_SHARE * free:
            raise MemoryError(f"the backprop baseline keeps the {what} images decoded: {need / 1e9:.1f} GB, more than "
                              f"half the {free / 1e9:.1f} GB free; use fewer images or --baseline-epochs 0")
    xs, ys = [], []
    for i in range(len(dataset)):
        x, _ = dataset.load(i)
        if x is not None:
            xs.append(x)
            ys.append(int(dataset.labels[i]))
    if not xs:
        raise ValueError(f"the {what} split has no readable image for the backprop baseline")
    return np.stack(xs).astype(np.float32), np.asarray(ys, dtype=np.int64)


def make_net(model: str, cut, weights: str, seed: int, n_classes: int, input_size: int):
    """(net, parameters): the cut + AdaptiveAvgPool2d(1) + Flatten + Linear(C, classes)."""
    import torch

    from engine.backbones import build_cut, cut_map_shape

    body, resolved = build_cut(model, cut, weights, seed, pool="avg", input_size=input_size)
    channels = cut_map_shape(model, resolved.name, input_size)[0]
    torch.manual_seed(seed)
    net = torch.nn.Sequential(body, torch.nn.Linear(channels, n_classes))
    return net, sum(int(p.numel()) for p in net.parameters())


def test_accuracy(net, X: np.ndarray, y: np.ndarray, device, batch: int = 64) -> float:
    import torch

    net.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(X), batch):
            pred = net(torch.from_numpy(X[i:i + batch]).to(device)).argmax(1).cpu().numpy()
            right += int((pred == y[i:i + batch]).sum())
    return 100 * right / len(X)


def train_epoch(net, opt, X, y, batch: int, rng, device) -> float:
    """One shuffled pass; returns its seconds (the device synchronized at the end)."""
    import torch

    loss_fn = torch.nn.CrossEntropyLoss()
    net.train()
    t0 = time.perf_counter()
    order = rng.permutation(len(X))
    for i in range(0, len(X), batch):
        b = order[i:i + batch]
        if len(b) < 2:  # BatchNorm cannot train on a batch of one
            continue
        opt.zero_grad()
        loss_fn(net(torch.from_numpy(X[b]).to(device)), torch.from_numpy(y[b]).to(device)).backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def run_baseline(model: str, cut, weights: str, train_data, test_data, n_classes: int, input_size: int,
                 epochs: int, lr: float = 1e-4, batch: int = 32, seed: int = 0, threads: int | None = None,
                 progress: bool | None = None) -> dict:
    """The baseline's row: test accuracy and cumulative training seconds after every epoch."""
    import torch

    torch.set_num_threads(threads or os.cpu_count() or 1)
    t0 = time.perf_counter()
    (X, y), (Xt, yt) = decode(train_data, "train"), decode(test_data, "test")
    decode_s = time.perf_counter() - t0
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where the engines run too
    net, n_params = make_net(model, cut, weights, seed, n_classes, input_size)
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    rows, spent = [], 0.0
    with progress_bar(progress, total=epochs, desc=f"backprop {cut}", unit="epoch") as bar:
        for e in range(1, epochs + 1):
            spent += train_epoch(net, opt, X, y, batch, rng, device)
            rows.append({"epoch": e, "accuracy_pct": round(test_accuracy(net, Xt, yt, device), 4),
                         "training_s": round(spent, 3)})
            bar.update(1)
    best = max(rows, key=lambda r: r["accuracy_pct"]) if rows else None
    return {"epochs": rows, "best": best, "lr": lr, "batch": batch, "parameters": n_params,
            "decode_s": round(decode_s, 3), "n_train": len(y), "n_test": len(yt), "device": str(device)}
