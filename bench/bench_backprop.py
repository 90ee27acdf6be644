"""The backprop baseline: the same backbone fine-tuned with a linear head, as the reference's backprop.py.

MobileNetV2 ImageNet features + global average pool + Linear(1280, classes), every parameter
trained with cross-entropy and Adam (lr 1e-4), batch 32, for 1..E epochs, on ../shared/data/clothing
with otl's preprocessing (the resize + center crop of otl's default build: 288 from 329 unless
--input-size says otherwise, 224 being the weights' own; images decoded once, kept in memory,
shuffled each epoch). Training sets of 10, 20, 50 images per class and the full train/ (3 seeded
draws each, the same rows bench_recipes.py draws; `--sizes full:1,10:2` sets draws per size, since
an epoch of the full set takes minutes on a CPU; `--full-epochs` likewise). Test accuracy (372
images) after every epoch and the training time up to it (image decoding excluded, as it is from
otl's fit time). With --validation, also the validation split's accuracy (341 images) after every
epoch, and the test accuracy at the epoch validation picks: the best epoch by test accuracy is how
the reference reports it, and is biased in backprop's favour by the choice. Writes --json for
bench_recipes.py --backprop.

    python bench/bench_backprop.py [--sizes 10,20,50,full] [--draws 3] [--epochs 5] [--full-epochs 3]
                                   [--input-size 288] [--validation] [--json /tmp/backprop.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.bench_selection import CLOTHING, clothing_ready, draw  # noqa: E402


def load(split_paths, preprocess):
    from engine.data import load_rgb

    return np.stack([preprocess(load_rgb(p)) for p in split_paths])


def model(n_classes: int, seed: int):
    import torch

    from engine.backbones import build_torchvision

    net = build_torchvision("mobilenet_v2", "imagenet")
    torch.manual_seed(seed)
    head = torch.nn.Linear(1280, n_classes)
    return torch.nn.Sequential(net.features, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(1), head)


def accuracy(net, X, y, batch=64) -> float:
    import torch

    net.eval()
    right = 0
    with torch.no_grad():
        for i in range(0, len(X), batch):
            right += int((net(torch.from_numpy(X[i:i + batch])).argmax(1).numpy() == y[i:i + batch]).sum())
    return right / len(X)


def train(X, y, Xt, yt, n_classes, epochs, seed, Xv=None, yv=None):
    """[(epoch, test accuracy, cumulative training seconds, validation accuracy or None)]"""
    import torch

    net = model(n_classes, seed)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    out, spent = [], 0.0
    for epoch in range(1, epochs + 1):
        net.train()
        t0 = time.perf_counter()
        order = rng.permutation(len(X))
        for i in range(0, len(X), 32):
            b = order[i:i + 32]
            opt.zero_grad()
            loss = loss_fn(net(torch.from_numpy(X[b])), torch.from_numpy(y[b]))
            loss.backward()
            opt.step()
        spent += time.perf_counter() - t0
        val = None if Xv is None else accuracy(net, Xv, yv)
        out.append((epoch, accuracy(net, Xt, yt), spent, val))
        print(f"    epoch {epoch}: test {100 * out[-1][1]:.1f} %"
              + ("" if val is None else f", validation {100 * val:.1f} %") + f" after {spent:.0f} s of training",
              flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,20,50,full")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--full-epochs", type=int, default=3)
    ap.add_argument("--input-size", type=int, default=None,
                    help="crop size (default: otl's default build's, 288; 224 is the weights' own)")
    ap.add_argument("--validation", action="store_true", help="score the validation split after every epoch too")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if not clothing_ready():
        return 0
    import torch

    from engine.build import BuildConfig, resolve_recipe
    from engine.data import load_splits

    torch.set_num_threads(os.cpu_count() or 1)
    # the preprocessing of the otl build these rows would be featurized by (input size, resize, crop)
    pre = resolve_recipe(BuildConfig(model="mobilenet_v2", weights="imagenet", input_size=a.input_size)).preprocess
    sp = load_splits(str(CLOTHING), pre)
    ytr, yte = sp.train.labels, sp.test.labels
    t0 = time.perf_counter()
    Xte = load(sp.test.paths, pre)
    Xva = yva = None
    if a.validation:
        if sp.validation is None:
            print(f"--validation: {CLOTHING} has no validation split")
            return 2
        Xva, yva = load(sp.validation.paths, pre), sp.validation.labels
    print(f"backprop baseline: MobileNetV2 + GAP + linear, Adam lr 1e-4, batch 32, input {pre.crop_size} "
          f"(resize {pre.resize_size}), torch {torch.__version__} on {torch.get_num_threads()} CPU threads; "
          f"test{' and validation' if a.validation else ''} decoded in {time.perf_counter() - t0:.1f} s")
    results = []
    for spec in a.sizes.split(","):
        s, _, n = spec.partition(":")
        size = None if s == "full" else int(s)
        label = "full" if size is None else f"{size}/class"
        n_draws = int(n) if n else (1 if size is None else a.draws)
        epochs = a.full_epochs if size is None else a.epochs
        curves = []
        for d in range(n_draws):
            idx = draw(ytr, size, seed=d)
            X = load([sp.train.paths[i] for i in idx], pre)
            curves.append(train(X, ytr[idx], Xte, yte, len(sp.classes), epochs, seed=d, Xv=Xva, yv=yva))
            print(f"  {label} draw {d}: "
                  + ", ".join(f"ep{e} {100 * acc:.1f}% ({t:.0f}s)" for e, acc, t, _ in curves[-1]),
                  flush=True)
        acc = 100 * np.array([[c[1] for c in cur] for cur in curves])  # (draws, epochs)
        sec = np.array([[c[2] for c in cur] for cur in curves])
        mean = acc.mean(0)
        se = acc.std(0, ddof=1) / np.sqrt(len(acc)) if len(acc) > 1 else np.zeros_like(mean)
        best = int(np.argmax(mean))
        row = {"size": label, "rows": len(idx), "draws": n_draws, "input_size": pre.crop_size,
               "accuracy": mean.tolist(), "se": se.tolist(), "seconds": np.median(sec, 0).tolist(),
               "best_epoch": best + 1, "best_accuracy": float(mean[best]), "best_se": float(se[best]),
               "best_epoch_seconds": float(np.median(sec[:, best]))}
        if a.validation:  # each draw's epoch picked by its validation accuracy (ties: the earlier), scored on test
            val = 100 * np.array([[c[3] for c in cur] for cur in curves])
            pick = val.argmax(1)
            chosen = acc[np.arange(len(acc)), pick]
            row.update(validation=val.mean(0).tolist(), validation_epochs=(pick + 1).tolist(),
                       validation_pick_accuracy=float(chosen.mean()),
                       validation_pick_se=float(chosen.std(ddof=1) / np.sqrt(len(chosen))) if len(chosen) > 1 else 0.0,
                       validation_pick_seconds=float(np.median(sec[np.arange(len(sec)), pick])))
            print(f"{label:>9}: validation picks epoch(s) {row['validation_epochs']}: test "
                  f"{row['validation_pick_accuracy']:.2f}", flush=True)
        results.append(row)
        print(f"{label:>9}: " + "  ".join(f"ep{e + 1} {m:.1f}+-{x:.1f} ({t:.0f}s)" for e, (m, x, t) in
                                           enumerate(zip(mean, se, np.median(sec, 0)))), flush=True)
        if a.json:  # after every size: a long run that is stopped keeps what it measured
            Path(a.json).write_text(json.dumps({"results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
