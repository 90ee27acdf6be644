"""Featurization throughput: ONNX Runtime fp32 (ours) vs torch eager fp32 (the reference's featurizer).

Same cut module, same random batch, same thread count, measured side by side in one process:
rounds alternate between the two runners and the median batch time of each is reported.

    python bench/bench_featurize.py                 # densenet169 cut after denseblock3, 224, batch 32
    python bench/bench_featurize.py --quick         # a smaller input for a smoke run
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="densenet169")
    p.add_argument("--cut", default="denseblock3")
    p.add_argument("--input-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="input 96, 3 rounds")
    a = p.parse_args(argv)
    if a.quick:
        a.input_size, a.rounds = 96, 3

    import torch

    from engine.backbones import build_cut
    from engine.export import export_onnx
    from engine.backends import make_runner

    torch.set_num_threads(a.threads)
    module, cut = build_cut(a.model, a.cut, "random", seed=0)
    x = np.random.default_rng(0).standard_normal((a.batch_size, 3, a.input_size, a.input_size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_onnx(module, Path(tmp) / "m.onnx", a.input_size)
        runners = {
            "onnxruntime_fp32": make_runner("onnxruntime", onnx_path, threads=a.threads),
            "torch_eager_fp32": make_runner("torch", module, threads=a.threads),
        }
        times: dict[str, list[float]] = {k: [] for k in runners}
        outs = {}
        for r in runners.values():
            r.activate()
        for name, r in runners.items():  # warm-up: first calls allocate and pick kernels
            outs[name] = r.infer(x)
        for _ in range(a.rounds):
            for name, r in runners.items():
                t0 = time.perf_counter()
                r.infer(x)
                times[name].append(time.perf_counter() - t0)
        for r in runners.values():
            r.deactivate()
    ref = outs["torch_eager_fp32"]
    err = float(np.abs(outs["onnxruntime_fp32"] - ref).max() / (np.abs(ref).max() + 1e-12))
    ips = {k: a.batch_size / statistics.median(v) for k, v in times.items()}
    ratio = ips["onnxruntime_fp32"] / ips["torch_eager_fp32"]
    print(f"{a.model} cut {cut.name}, {a.input_size}x{a.input_size}, batch {a.batch_size}, {a.threads} threads, "
          f"median of {a.rounds} rounds")
    for k, v in ips.items():
        print(f"  {k:<18} {v:8.2f} images/s   (batch times {', '.join(f'{t:.2f}' for t in times[k])} s)")
    print(f"  ratio onnxruntime/torch: {ratio:.2f}x   (goal >= 1.5x)   max rel diff {err:.1e}")
    return {"images_per_second": ips, "ratio": ratio, "max_rel_diff": err}


if __name__ == "__main__":
    main()
