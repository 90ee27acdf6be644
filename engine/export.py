"""torch -> ONNX fp32 (dynamic batch, one self-contained file) and the fp16 graph derived from it.

The dynamo exporter folds each Conv -> BatchNormalization pair into the Conv (the folded weight
keeps the Conv's torch name, `0.denseblock1.denselayer1.conv1.weight`) and keeps the other
BatchNormalizations as nodes (DenseNet's pre-activation norms after a Concat: checked on
densenet121, 7 BatchNormalization nodes left, none in MobileNetV2). calibration/ relies on the
names to map ONNX Conv nodes back to torch modules, and rewrites the remaining BatchNormalizations
as 1x1 depthwise Convs for the int8 graph, so the exporter choice is part of the int8 contract.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path

OPSET = 18
INPUT_NAME = "images"
OUTPUT_NAME = "features"
MAX_BATCH = 4096
EXPORT_BATCH = 2  # the traced example's batch (engine/backbones/sizes.py checks its memory first)


def export_onnx(module, path: str | os.PathLike, input_size: int = 224, verbose: bool = False,
                progress: bool | None = False) -> Path:
    """Export `module` (N, 3, S, S) float32 -> (N, F) float32 to `path`, atomically.

    The batch axis is dynamic (1..MAX_BATCH). External data is inlined: models here are < 2 GB.
    progress: a bar on stderr through the steps (tracing a DenseNet takes tens of seconds on a
    laptop; kernels/progress.py says when it is drawn).
    """
    import onnx
    import torch

    from kernels.progress import progress_bar

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = torch.zeros(EXPORT_BATCH, 3, input_size, input_size)
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export.") as tmp, \
            progress_bar(progress, total=2, desc="export onnx", unit="step") as bar:
        raw = Path(tmp) / "model.onnx"
        sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
        with sink, torch.no_grad():
            torch.onnx.export(
                module.eval(), (x,), str(raw), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                opset_version=OPSET, dynamo=True, dynamic_shapes=({0: batch},), external_data=False,
            )
        bar.update(1)
        model = onnx.load(str(raw), load_external_data=True)
        onnx.checker.check_model(model)
        save_onnx(model, path)
        bar.update(1)
    return path


def save_onnx(model, path: str | os.PathLike) -> Path:
    """Check and write an ONNX model atomically (temp file in the same folder, then rename)."""
    import onnx

    from kernels.io import atomic_write_bytes

    onnx.checker.check_model(model)
    return atomic_write_bytes(path, model.SerializeToString())


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """fp16 graph with fp32 inputs and outputs (onnxconverter-common's converter).

    Casts sit at the graph boundary only, so TensorRT's strongly typed builder runs the body in
    fp16. On x86 ONNX Runtime has no fp16 Conv kernels and inserts casts around each node: there
    the fp16 engine is an accuracy emulation, slower than fp32.
    """
    import onnx
    from onnxconverter_common import float16

    import warnings

    model = onnx.load(str(src))
    with warnings.catch_warnings():  # one warning per tiny BN constant rounded to fp16's range
        warnings.simplefilter("ignore", UserWarning)
        half = float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    return save_onnx(half, dst)
