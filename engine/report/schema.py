"""report.json: the fields every report has, and their units.

A report is one JSON object (REPORT_KIND). Units live in the key names' suffixes and are spelled
out in UNITS, which report.json carries too: `_s` seconds, `_ms` milliseconds, `_mb` megabytes
(10^6 bytes), `_pct` percent, `_db` decibels, `_per_s` per second. Accuracies are percent of the
test split's images. A mean over projection seeds comes with its standard error `se_pct`
(sample standard deviation / sqrt(seeds); None with one seed) and the per-seed values. A dict
whose key has a unit (timings_s, latency_ms) gives it to its values. Latency is at batch 1;
featurize.batch is the throughput batch; a baseline epoch's training_s is cumulative.
"""
from __future__ import annotations

REPORT_KIND = "otl-report"
REPORT_VERSION = 1

UNITS = {
    "_s": "seconds", "_ms": "milliseconds", "_mb": "megabytes (10^6 bytes)", "_pct": "percent",
    "_db": "decibels", "_per_s": "per second", "_ms_per_image": "milliseconds per image", "parameters": "count", "rows": "count",
    "n_components": "count (optical components K)", "cosine": "ratio (1 = identical)",
    "relative_l2": "ratio (||x - x_fp32|| / ||x_fp32||)", "cosine_in_int8_model": "ratio (1 = identical)",
    "output_sqnr_db_all": "decibels (all tensors quantized)",
}

# Every variant row (one per cut x precision x backend) has these keys; a failed variant has
# status "failed", its error, and None wherever it has no number.
VARIANT_KEYS = ("id", "cut", "precision", "backend", "emulated", "status", "error", "backbone", "build",
                "featurize", "agreement", "accuracy", "timings_s", "training_s", "inference_ms_per_image")
BACKBONE_KEYS = ("parameters", "parameters_mb", "features", "map_shape")
BUILD_KEYS = ("build_s", "calibration_s", "reused", "onnx_mb", "artifact_mb", "build_dir")
FEATURIZE_KEYS = ("batch", "images_per_s", "latency_ms", "warmup_s", "warmup_runs", "latency_runs",
                  "peak_host_mb", "peak_gpu_mb")
LATENCY_KEYS = ("p50", "p95", "p99")
AGREEMENT_KEYS = ("reference", "cosine", "relative_l2", "bit_agreement_pct", "images_with_flips_pct")
ACCURACY_KEYS = ("mean_pct", "se_pct", "per_seed_pct", "seeds", "n_components", "encoder", "alphas")
# Stages of one variant's time, in order; they add up to timings_s["total"] (what is not in a stage
# is bookkeeping: milliseconds on a CPU; on a GPU the CUDA context's first use can add more). Fit
# stages are summed over the seeds.
STAGES = ("build", "backbone", "load_data", "load_engine", "featurize_train", "featurize_test", "latency", "compare", "load",
          "encode", "project", "select", "solve", "predict")
SWEEP_KEYS = ("cut", "precision", "pool", "encoder", "projection", "n_components", "mean_pct", "se_pct",
              "per_seed_pct", "fit_s", "status", "error")
SENSITIVITY_KEYS = ("cut", "backend", "status", "error", "images", "threshold", "tensors", "worst",
                    "first_below", "output_sqnr_db_all")
TENSOR_KEYS = ("name", "order", "op", "tensor_sqnr_db", "output_sqnr_db", "cosine_in_int8_model")
BASELINE_KEYS = ("cut", "status", "error", "epochs", "best", "lr", "batch", "parameters")
EPOCH_KEYS = ("epoch", "accuracy_pct", "training_s")
TOP_KEYS = ("kind", "version", "created", "command", "config", "environment", "units", "data", "variants",
            "components", "recipes", "sensitivity", "baseline", "headline", "timings_s", "files")
