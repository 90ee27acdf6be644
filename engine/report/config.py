"""What `otl report` compares, checked up front (before any build) so a bad request costs nothing."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_ENCODERS = ("threshold:median", "thresholds:8", "sign")


@dataclass
class ReportConfig:
    out: str = "reports/digits"  # the report folder; builds/ and stores/ inside it are reused by key
    model: str = "mobilenet_v2"
    cuts: tuple = (None,)  # cut names (`otl cuts MODEL`); None: the model's default cut
    weights: str = "imagenet"  # imagenet | random | PATH
    data: str | None = None  # image folder; None: the embedded digits
    precisions: tuple = ("fp32", "fp16", "int8")
    backends: tuple = ("auto",)  # auto: TensorRT when usable, else ONNX Runtime; several: one row each
    n_components: tuple = (1000, 2000, 4000)  # the K sweep (fp32, every cut)
    row_components: int | None = None  # K of the per-variant accuracy; None: the largest swept K
    seeds: int = 5  # projection seeds per accuracy (mean +- standard error)
    encoder: str | None = None  # the rows' encoder; None: the fit's default
    pool: str | None = None  # the rows' pooling at the cut; None: the build's default
    sweep_encoders: tuple = DEFAULT_ENCODERS  # the recipe sweep (rows' pool, fp32)
    sweep_pools: tuple = ("avg",)  # more poolings in the recipe sweep (one fp32 build each)
    linear_probe: bool = True  # ridge on the pooled floats, no projection: the plain baseline
    baseline_epochs: int = 5  # backprop baseline epochs; 0: no baseline
    baseline_cuts: tuple | None = None  # None: every cut
    baseline_lr: float = 1e-4
    baseline_batch: int = 32
    resize: str = "crop"
    input_size: int | None = None
    calibration_images: int = 512
    sensitivity_images: int = 8  # int8 sensitivity: test images run through every single-tensor model
    sensitivity_threshold: float = 0.99  # "first tensor below": cosine with fp32 in the int8 model
    throughput_batch: int = 32
    latency_runs: int = 50  # batch-1 inferences timed (after warmup_runs untimed ones)
    warmup_runs: int = 3
    test_fraction: float = 0.2
    split_seed: int = 0
    seed: int = 0  # random weights
    threads: int | None = None
    workers: int | None = None
    force: bool = False  # rebuild and re-featurize even when the keys are unchanged
    progress: bool | None = None
    command: str | None = field(default=None, repr=False)  # the command line, recorded in report.json

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def k_rows(self) -> int:
        return int(self.row_components or max(self.n_components))

    @property
    def baseline_at(self) -> tuple:
        return tuple(self.cuts) if self.baseline_cuts is None else tuple(self.baseline_cuts)


def check_report(cfg: ReportConfig) -> None:
    """Raise ValueError naming the field, what came in and what is expected."""
    from engine.backbones import model_info
    from engine.backbones.cuts import resolve
    from engine.backends import BACKENDS, buildable
    from engine.build import PRECISIONS
    from engine.checks import check_int
    from kernels.encode import parse_encoder

    model_info(cfg.model)
    _check_members("precisions", cfg.precisions, PRECISIONS)
    _check_members("backends", cfg.backends, ("auto",) + tuple(b for b in BACKENDS if buildable(b)))
    if not cfg.cuts:
        raise ValueError("cuts: expected at least one cut name (see `otl cuts MODEL`)")
    names = [resolve(cfg.model, c).name for c in cfg.cuts]
    if len(set(names)) != len(names):
        raise ValueError(f"cuts: {list(cfg.cuts)} names one cut twice (resolved: {names})")
    for c in cfg.baseline_at:
        resolve(cfg.model, c)
    extra = set(cfg.baseline_at) - set(cfg.cuts)
    if extra:
        raise ValueError(f"baseline cuts {sorted(map(str, extra))} are not among the report's cuts {list(cfg.cuts)}")
    ks = list(cfg.n_components) + ([cfg.row_components] if cfg.row_components is not None else [])
    if not cfg.n_components or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"n_components: expected positive integers, got {list(cfg.n_components)}")
    for name in ("seeds", "throughput_batch", "latency_runs"):
        check_int(name, getattr(cfg, name), 1)
    for name in ("baseline_epochs", "warmup_runs", "sensitivity_images", "baseline_batch"):
        check_int(name, getattr(cfg, name), 0 if name != "baseline_batch" else 1)
    if not 0 < cfg.sensitivity_threshold <= 1:
        raise ValueError(f"sensitivity_threshold: expected a cosine in (0, 1], got {cfg.sensitivity_threshold}")
    if not cfg.baseline_lr > 0:
        raise ValueError(f"baseline_lr: expected a positive learning rate, got {cfg.baseline_lr}")
    for spec in (cfg.encoder,) + tuple(cfg.sweep_encoders):
        if spec is not None and not parse_encoder(spec).binary:
            raise ValueError(f"encoder {spec!r} makes floats; the rows and the sweeps project bits (the linear probe "
                             "on floats is linear_probe / --no-linear-probe)")
    if "int8" in cfg.precisions and (cfg.split_seed != cfg.seed or cfg.test_fraction != 0.2):
        raise ValueError("int8 calibration draws its images from train as split with seed = the weights' seed and "
                         f"test_fraction 0.2; with split_seed {cfg.split_seed} / test_fraction {cfg.test_fraction} "
                         "they could overlap the report's test split. Keep the defaults, or leave int8 out")
    if cfg.data is not None and not Path(cfg.data).is_dir():
        raise ValueError(f"data: {cfg.data} is not a folder; expected DIR/{{train,test}}/<class>/* or DIR/<class>/*, "
                         "or no --data for the embedded digits")


def _check_members(name: str, values, allowed) -> None:
    if not values:
        raise ValueError(f"{name}: expected at least one of {', '.join(allowed)}")
    bad = [v for v in values if v not in allowed]
    if bad:
        raise ValueError(f"{name}: unknown {bad}; expected some of {', '.join(allowed)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: {list(values)} names one twice")

