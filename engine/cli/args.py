"""Argument groups, defined once and shared by the commands, and their parsing into configs."""
from __future__ import annotations

import argparse

from engine.checks import MAX_SEED, MIN_INPUT_SIZE, fraction_problem, int_problem

EMULATION_NOTE = ("fp16 on ONNX Runtime CPU is an accuracy emulation: x86 has no fp16 kernels, "
                  "ONNX Runtime wraps casts around each node, so it runs slower than fp32")


def integer(minimum: int, maximum: int | None = None):
    """An argparse `type=` for an integer in [minimum, maximum]: argparse adds the flag's name
    ("argument --input-size: expected an integer >= 32, got 7") and exits with status 2."""
    def parse(text: str) -> int:
        return _parsed(text, int, lambda v: int_problem(v, minimum, maximum))
    parse.__name__ = "integer"
    return parse


def fraction(text: str) -> float:
    """An argparse `type=` for a fraction in [0, 1)."""
    return _parsed(text, float, fraction_problem)


def _parsed(text: str, kind, problem):
    try:
        value = kind(text)
    except ValueError:
        value = text
    why = problem(value)
    if why:
        raise argparse.ArgumentTypeError(why)
    return value


def build_args(p: argparse.ArgumentParser, runs_builds: bool = False) -> None:
    """What `otl engines` builds (also offered by `otl featurize`, which builds when --build is not given;
    runs_builds: its --backend may also run a given build on the torch reference)."""
    from engine.backbones import DEFAULT_POOL, MODELS, POOL_HELP
    from engine.backends import BACKENDS, buildable
    from engine.build import PRECISIONS

    backends = BACKENDS if runs_builds else tuple(b for b in BACKENDS if buildable(b))

    g = p.add_argument_group("build")
    g.add_argument("--model", default="densenet169", help=f"backbone: {', '.join(MODELS)} (default densenet169)")
    g.add_argument("--cut", default=None, help="cut name (see `otl cuts MODEL`); default: the model's default cut")
    g.add_argument("--weights", default="imagenet", help="imagenet (default) | random | PATH to a state_dict")
    g.add_argument("--precision", default="fp32", help=f"{' | '.join(PRECISIONS)} (default fp32)")
    g.add_argument("--input-size", type=integer(MIN_INPUT_SIZE), default=None,
        help="square input size (default: 9/7 of the weights' crop, 288 for ImageNet's 224; the reference: 224)")
    g.add_argument("--pool", default=None, help=f"pooling at the cut, inside the build's graph: {POOL_HELP}; default "
                                                 f"{DEFAULT_POOL} (avg2 or avg on maps smaller than 3x3; the reference: none)")
    g.add_argument("--resize", default="crop", choices=("crop", "squash"),
                   help="crop: shorter side + center crop (torchvision's weights transforms); "
                        "squash: the whole image resized to a square (the reference's); default crop")
    g.add_argument("--force", action="store_true", help="rebuild even when the manifest key is unchanged (default off)")
    g.add_argument("--calibration-images", type=integer(1), default=512,
        help="int8: images used for calibration (default 512)")
    g.add_argument("--calibration-method", default="entropy", help="int8: entropy (default) | max | percentile")
    g.add_argument("--keep-fp32", type=integer(0), default=3,
                   help="int8: leave the first N quantizable activations in fp32, the most sensitive layers "
                        "(default 3; 0: all int8)")
    g.add_argument("--no-bias-correction", dest="bias_correction", action="store_false",
                   help="int8: do not fold the mean error of the int8 weights into the biases (default: folded)")
    g.add_argument("--refine-images", type=integer(0), default=0,
                   help="int8: choose each tensor's clip value (amax) among the calibrator's candidates by the "
                        "feature error on N calibration images (slower build, more accurate features; default 0: off)")
    g.add_argument("--backend", default="auto", choices=backends, metavar="BACKEND",
                   help=f"{' | '.join(backends)} (default auto: TensorRT if usable, else ONNX Runtime)")


def runner_args(p: argparse.ArgumentParser, backend: bool = False) -> None:
    """How a build runs: threads (and, for commands that only run builds, the backend)."""
    g = p.add_argument_group("runner")
    if backend:
        from engine.backends import BACKENDS

        g.add_argument("--backend", default="auto", help=f"{' | '.join(BACKENDS)} "
                                                         "(default auto: the backend the build was made for)")
    g.add_argument("--threads", type=integer(1), default=None,
        help="intra-op threads of the runner (default: all cores)")


def build_folder_arg(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--build", "--engine", dest="build", default=None, metavar="BUILD_DIR", help=help)


def data_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None,
                   help="image folder: DIR/{train,validation,test}/<class>/* or DIR/<class>/*; default: embedded digits")
    g.add_argument("--test-fraction", type=fraction, default=0.2,
                   help="held-out fraction for DIR/<class>/* layouts and the digits (default 0.2)")
    g.add_argument("--validation-fraction", type=fraction, default=0.0,
                   help="validation fraction carved from train when DIR has no validation/ folder (default 0: none; "
                        "fit --select holdout without validation data carves 0.1)")
    g.add_argument("--strict", action="store_true",
        help="fail on unreadable images instead of skipping them (default off: skip, with a warning)")
    g.add_argument("--batch-size", type=integer(1), default=32, help="images per batch (default 32)")
    g.add_argument("--workers", type=integer(0), default=None,
        help="image decoding workers (default: min(4, cores); 0: in this process)")


def output_args(p: argparse.ArgumentParser, seed: bool = True) -> None:
    if seed:
        p.add_argument("--seed", type=integer(0, MAX_SEED), default=0,
            help="seed for random weights, splits and projections (default 0)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout (default off)")
    p.add_argument("--quiet", action="store_true",
        help="no progress bars or warnings, except skipped images (default off)")


def progress(a: argparse.Namespace) -> bool | None:
    """None: progress bars when attached to a terminal; False with --quiet."""
    return False if a.quiet else None


def build_config(a: argparse.Namespace, out=None):
    from engine.build import BuildConfig

    return BuildConfig(model=a.model, cut=a.cut, weights=a.weights, seed=a.seed, precision=a.precision,
                       backend=a.backend, input_size=a.input_size, pool=a.pool, resize=a.resize, out=out,
                       data=getattr(a, "data", None), calibration_images=a.calibration_images,
                       calibration_method=a.calibration_method, keep_fp32=a.keep_fp32,
                       bias_correction=a.bias_correction, refine_images=a.refine_images,
                       batch_size=getattr(a, "batch_size", 32), threads=a.threads, force=a.force,
                       progress=progress(a))


def parse_alphas(text: str):
    if text.strip() in ("auto", "reference"):
        return text.strip()
    try:
        return tuple(float(a) for a in text.split(",") if a.strip())
    except ValueError:
        raise ValueError(f"--alphas {text!r}: expected auto, reference or comma-separated numbers, "
                         "e.g. 1e3,3e3,1e4") from None
