"""report.json -> report.md, a self-contained report.html and the PNG plots.

The content is built once as a list of blocks (headings, paragraphs, tables, images), then
written twice: as Markdown (plots linked as plots/*.png) and as HTML with inline CSS, the plots
embedded as data: URIs, every string escaped, nothing fetched from anywhere. Missing numbers read
"—" in tables and "n/a" in the headline; failed rows carry their error.

    from engine.report.render import render
    render(json.loads(Path("report.json").read_text()), out_dir)  # {"report.md": "report.md", ...}
"""
from __future__ import annotations

from pathlib import Path

from engine.report.formats import Code, to_html, to_markdown
from engine.report.plots import make_plots
from engine.report.rows import cut_name, ok, prec_label, worst_tensors
from engine.report.schema import LATENCY_KEYS, STAGES

EMULATION_NOTE = ("(emulated): the precision's accuracy is measured, its speed is not: ONNX Runtime's CPU "
                  "provider has no native fp16 kernels on x86, so it runs the fp16 model with casts around "
                  "each node, slower than fp32.")
MISSING = "—"


def _f(x, digits: int = 2) -> str:
    """A number with `digits` decimals; None reads MISSING."""
    return MISSING if x is None else f"{x:.{digits}f}"


def _pm(mean, se, digits: int = 2) -> str:
    """mean ± se; one seed (se None) reads "mean (1 seed)"."""
    if mean is None:
        return MISSING
    return f"{mean:.{digits}f} ± {se:.{digits}f}" if se is not None else f"{mean:.{digits}f} (1 seed)"


def _join(values) -> str:
    """A config value as text: lists comma-joined, None "(default)"."""
    if values is None:
        return "(default)"
    return ", ".join(map(str, values)) if isinstance(values, (list, tuple)) else str(values)


def _status(row: dict) -> list:
    """A row's status cell: "ok", or "failed: " and its error verbatim."""
    if row.get("status") == "ok":
        return ["ok"]
    return [f"{row.get('status')}: ", Code(row.get("error") or "no error recorded")]


def _emulated(rows) -> list:
    """The emulation footnote, when one of the rows is emulated."""
    return [("p", EMULATION_NOTE)] if any(r.get("emulated") for r in rows) else []


def _sweep_emulated(rep: dict, cut, precision) -> bool:
    """A sweep row's precision is emulated when every variant of that cut and precision is."""
    rows = [v for v in ok(rep.get("variants")) if (v.get("cut"), v.get("precision")) == (cut, precision)]
    return bool(rows) and all(v.get("emulated") for v in rows)


def _images(plots: dict, *names) -> list:
    """Image blocks of the drawn plots among `names` (file stems)."""
    return [("img", rel, title) for rel, title in plots.items() if Path(rel).stem in names]


def _headline(rep: dict) -> list:
    """int8 / fp16 vs fp32 and gradient-free vs backprop, from report["headline"]."""
    h = rep.get("headline") or {}
    if h.get("cut") is None and h.get("fp32_pct") is None:
        lead = "No fp32 variant completed, so there is no headline comparison: n/a."
    else:
        lead = (f"At {cut_name(h.get('cut'))}" + (f" on {h['backend']}" if h.get("backend") else "")
                + f", K = {h.get('n_components') or 'n/a'} optical components"
                + (f", fp32 reaches {_pm(h['fp32_pct'], h.get('fp32_se_pct'))} % test accuracy." if h.get("fp32_pct")
                   is not None else "."))
    parts = [lead] + [_versus(h.get(f"{p}_vs_fp32"), p) for p in ("int8", "fp16")]
    return [("h", 2, "Headline"), ("p", " ".join(parts)), ("p", _versus_backprop(h.get("gradient_free_vs_backprop")))]


def _na(x, fmt: str) -> str:
    """A headline number formatted with `fmt`; None reads "n/a"."""
    return "n/a" if x is None else format(x, fmt)


def _versus(d: dict | None, precision: str) -> str:
    """One sentence: a precision against fp32 (accuracy points ± s.e., speed-up, size ratio)."""
    if not d:
        return f"{precision} vs fp32: n/a (not run or failed)."
    se = f" ± {d['se_points']:.2f}" if d.get("se_points") is not None and d.get("accuracy_points") is not None else ""
    return (f"{prec_label(precision, d.get('emulated'))} vs fp32: {_na(d.get('accuracy_points'), '+.2f')}{se} "
            f"accuracy points, {_na(d.get('speedup'), '.2f')}× the throughput (images/s), "
            f"{_na(d.get('size_ratio'), '.2f')}× the size on disk.")


def _versus_backprop(g: dict | None) -> str:
    """One sentence: gradient-free against backprop (accuracy, training time)."""
    if not g:
        return "Gradient-free vs backprop: n/a (no baseline)."
    return (f"Gradient-free (fp32) vs backprop: {_na(g.get('gradient_free_pct'), '.2f')} % vs "
            f"{_na(g.get('backprop_pct'), '.2f')} % ({_na(g.get('accuracy_points'), '+.2f')} accuracy points); "
            f"training {_na(g.get('gradient_free_training_s'), '.1f')} s vs "
            f"{_na(g.get('backprop_training_s'), '.1f')} s: "
            f"backprop takes {_na(g.get('time_ratio'), '.1f')}× as long (its best epoch: "
            f"{g.get('backprop_best_epoch') or 'n/a'}" + (f" of {g['backprop_epochs']})." if g.get("backprop_epochs")
                                                          else ")."))


def _setup(rep: dict) -> list:
    """Configuration, data and environment tables."""
    c, d, env = rep.get("config") or {}, rep.get("data") or {}, rep.get("environment") or {}
    hw = env.get("hardware") or {}
    config = [("model", c.get("model")), ("cuts", [cut_name(x) for x in c.get("cuts") or []]),
              ("weights", c.get("weights")), ("data", c.get("data")), ("precisions", c.get("precisions")),
              ("backends", c.get("backends")), ("K sweep (components)", c.get("n_components")),
              ("K per variant (components)", c.get("row_components")), ("projection seeds (count)", c.get("seeds")),
              ("backprop epochs (count)", c.get("baseline_epochs"))]
    data = [("source", d.get("source")), ("classes", d.get("classes")), ("train images (count)", d.get("n_train")),
            ("test images (count)", d.get("n_test"))]
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
    environment = [("versions", versions or None), ("python", env.get("python")), ("platform", env.get("platform")),
                   ("CPU", hw.get("cpu")), ("cores (count)", hw.get("cores")), ("memory (GB)", hw.get("memory_gb")),
                   ("GPU", hw.get("gpu") or "none"), ("report total (s)", (rep.get("timings_s") or {}).get("total"))]
    blocks = []
    for title, pairs in (("Configuration", config), ("Data", data), ("Environment", environment)):
        blocks += [("h", 2, title), ("table", ["setting", "value"], [[k, _join(v)] for k, v in pairs])]
    return blocks


VARIANT_HEADERS = ["cut", "precision", "backend", "status", "test accuracy (%, mean ± s.e.)",
                   "backbone (M parameters / MB)", "throughput (images/s @ batch size)",
                   "latency p50 / p95 / p99, batch 1 (ms)", "warm-up (s)", "peak host / GPU memory (MB)",
                   "ONNX (MB)", "artifact (MB)", "build (s)", "calibration (s)", "cosine vs fp32 (ratio)",
                   "relative L2 vs fp32 (ratio)", "bit agreement vs fp32 (%)", "images with a flipped bit (%)",
                   "training (s)", "inference (ms/image)"]


def _variant_row(v: dict) -> list:
    """One variant's cells, in VARIANT_HEADERS order."""
    f, b, a, g = (v.get(k) or {} for k in ("featurize", "build", "accuracy", "agreement"))
    lat = f.get("latency_ms") or {}
    speed = f"{_f(f.get('images_per_s'), 1)} @ {f.get('batch')}" if f.get("images_per_s") is not None else MISSING
    bb = v.get("backbone") or {}
    size = (f"{bb['parameters'] / 1e6:.2f} / {_f(bb.get('parameters_mb'), 1)}" if bb.get("parameters") is not None
            else MISSING)
    return [cut_name(v.get("cut")), prec_label(v.get("precision"), v.get("emulated")), str(v.get("backend")),
            _status(v), _pm(a.get("mean_pct"), a.get("se_pct")), size, speed,
            " / ".join(_f(lat.get(k)) for k in LATENCY_KEYS) if lat else MISSING, _f(f.get("warmup_s"), 3),
            f"{_f(f.get('peak_host_mb'), 1)} / {_f(f.get('peak_gpu_mb'), 1)}" if f else MISSING,
            _f(b.get("onnx_mb")), _f(b.get("artifact_mb")), _f(b.get("build_s"), 1), _f(b.get("calibration_s"), 1),
            _f(g.get("cosine"), 4), _f(g.get("relative_l2"), 4), _f(g.get("bit_agreement_pct")),
            _f(g.get("images_with_flips_pct"), 1), _f(v.get("training_s"), 1), _f(v.get("inference_ms_per_image"), 3)]


def _stage_table(rows: list) -> list:
    """Seconds per stage of each ok variant (this run's; fits summed over the seeds)."""
    done = [v for v in ok(rows) if v.get("timings_s")]
    stages = [s for s in STAGES if any(s in v["timings_s"] for v in done)]
    if not done:
        return []
    body = [[v["id"]] + [_f(v["timings_s"].get(s), 2) for s in stages] + [_f(v["timings_s"].get("total"), 2)]
            for v in done]
    return [("p", "Time per stage in this run (s): a reused build or feature store costs ~0 here; build (s) "
                  "and training (s) above are what the variant costs."),
            ("table", ["variant"] + [f"{s} (s)" for s in stages] + ["total (s)"], body)]


def _variants(rep: dict, plots: dict) -> list:
    """The main table (one row per variant), its notes and plots."""
    rows = [v for v in rep.get("variants") or [] if v]
    blocks = [("h", 2, "Variants")]
    if not rows:
        return blocks + [("p", "No variant was run.")]
    acc = next((v["accuracy"] for v in ok(rows) if v.get("accuracy")), {})
    blocks.append(("p", f"One row per cut × precision × backend. Accuracy: test split, K = "
                        f"{acc.get('n_components') or 'n/a'} optical components, "
                        f"encoder {acc.get('encoder') or 'n/a'}, "
                        f"{len(acc.get('seeds') or []) or 'n/a'} projection seeds; agreement: features against the "
                        f"same cut's fp32 variant on the same backend; {MISSING}: not measured or not applicable."))
    blocks.append(("table", VARIANT_HEADERS, [_variant_row(v) for v in rows]))
    return blocks + _emulated(rows) + _stage_table(rows) + _images(plots, "accuracy_by_precision", "time_by_stage")


def _sweep(rep: dict, key: str, title: str, plots: dict) -> list:
    """The K sweep ("components") or the recipe sweep ("recipes"): a table and its plot."""
    rows = [r for r in rep.get(key) or [] if r]
    if not rows:
        return [("h", 2, title), ("p", "Not run.")]
    headers = ["cut", "precision", "pool", "encoder", "projection", "K (components)",
               "test accuracy (%, mean ± s.e.)", "seeds (count)", "fit (s)", "status"]
    emulated = [_sweep_emulated(rep, r.get("cut"), r.get("precision")) for r in rows]
    table = [[cut_name(r.get("cut")), prec_label(r.get("precision"), e), str(r.get("pool")), str(r.get("encoder")),
              str(r.get("projection")), str(r.get("n_components") or MISSING), _pm(r.get("mean_pct"), r.get("se_pct")),
              str(len(r.get("per_seed_pct") or [])), _f(r.get("fit_s")), _status(r)] for r, e in zip(rows, emulated)]
    note = [("p", EMULATION_NOTE)] if any(emulated) else []
    return [("h", 2, title), ("table", headers, table)] + note + _images(plots, key, f"accuracy_vs_{key}")


def _sensitivity_entry(e: dict) -> list:
    """One sensitivity entry: the whole model's SQNR, the first tensor below threshold, the ten worst."""
    head = ("h", 3, f"{cut_name(e.get('cut'))} ({e.get('backend')})")
    if e.get("status") != "ok":
        return [head, ("p", _status(e))]
    fb = e.get("first_below")
    below = (["First tensor whose cosine in the int8 model is below ", f"{e.get('threshold')}: ", Code(fb.get("name")),
              f" (graph order {fb.get('order')}, cosine {_f(fb.get('cosine'), 4)})."] if fb
             else [f"No tensor's cosine in the int8 model is below {e.get('threshold')}."])
    intro = [f"{e.get('images')} images; output SQNR of the whole int8 model: "
             f"{_f(e.get('output_sqnr_db_all'), 1)} dB. "]
    headers = ["rank", "tensor", "op", "graph order", "tensor SQNR (dB)", "output SQNR, only this tensor int8 (dB)",
               "cosine in int8 model (ratio)"]
    rows = [[str(i + 1), [Code(t.get("name"))], str(t.get("op")), str(t.get("order")), _f(t.get("tensor_sqnr_db"), 1),
             _f(t.get("output_sqnr_db"), 1), _f(t.get("cosine_in_int8_model"), 4)]
            for i, t in enumerate(worst_tensors(e))]
    return [head, ("p", intro + below), ("table", headers, rows)]


def _sensitivity(rep: dict, plots: dict) -> list:
    """Every sensitivity entry and the sensitivity plot."""
    entries = [e for e in rep.get("sensitivity") or [] if e]
    blocks = [("h", 2, "int8 sensitivity")]
    if not entries:
        return blocks + [("p", "Not run.")]
    blocks.append(("p", "The ten int8 tensors whose quantization alone hurts the model output most (lowest output "
                        "SQNR against fp32; every other tensor and weight kept fp32), per cut."))
    for e in entries:
        blocks += _sensitivity_entry(e)
    return blocks + _images(plots, "int8_sensitivity")


def _baseline(rep: dict, plots: dict) -> list:
    """The backprop baseline: best epoch per cut, every epoch, the comparison plots."""
    rows = [b for b in rep.get("baseline") or [] if b]
    blocks = [("h", 2, "Backprop baseline")]
    if not rows:
        return blocks + [("p", "Not run.")] + _images(plots, "cut_size", "backprop_vs_gradient_free")
    summary = [[cut_name(b.get("cut")), _status(b), str((b.get("best") or {}).get("epoch") or MISSING),
                _f((b.get("best") or {}).get("accuracy_pct")), _f((b.get("best") or {}).get("training_s"), 1),
                _join(b.get("parameters")) if b.get("parameters") else MISSING, _join(b.get("lr")),
                _join(b.get("batch"))] for b in rows]
    epochs = [[cut_name(b.get("cut")), str(e.get("epoch")), _f(e.get("accuracy_pct")), _f(e.get("training_s"), 1)]
              for b in rows for e in b.get("epochs") or []]
    blocks += [("p", "The backbone fine-tuned end to end with a linear head, trained on the same training images."),
               ("table", ["cut", "status", "best epoch", "best test accuracy (%)", "training to best epoch (s)",
                          "parameters (count)", "Adam learning rate (step size)", "batch (images)"], summary)]
    if epochs:
        blocks += [("h", 3, "Epochs"),
                   ("table", ["cut", "epoch", "test accuracy (%)", "training time up to this epoch (s)"], epochs)]
    return blocks + _images(plots, "cut_size", "backprop_vs_gradient_free")


def document(rep: dict, plots: dict, failed: dict | None = None) -> list:
    """The report's blocks, in order. plots: {relative path: title} of the plots drawn; failed:
    {plot name: error} of those that could not be drawn (said under the title)."""
    title = f"otl report: {(rep.get('config') or {}).get('model') or 'model'}"
    command = ("p", ["Command: ", Code(rep.get("command") or "n/a"), f" — created {rep.get('created') or 'n/a'}."])
    broken = [("p", ["Plot not drawn: ", Code(f"{name}: {err}")]) for name, err in (failed or {}).items()]
    return ([("h", 1, title), command] + broken + _headline(rep) + _setup(rep) + _variants(rep, plots)
            + _sweep(rep, "components", "Optical components (K)", plots) + _sweep(rep, "recipes", "Recipes", plots)
            + _sensitivity(rep, plots) + _baseline(rep, plots))


def render(report: dict, out_dir: Path) -> dict[str, str]:
    """Write the plots (PNG), report.md and report.html into out_dir (which exists). Returns
    {"report.md": "report.md", "report.html": "report.html", "plots/accuracy_by_precision.png": ..., ...}:
    the relative paths of every file written."""
    out_dir = Path(out_dir)
    plots, failed = make_plots(report, out_dir / "plots")
    blocks = document(report, plots, failed)
    (out_dir / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    (out_dir / "report.html").write_text(to_html(blocks, out_dir), encoding="utf-8")
    return {rel: rel for rel in ["report.md", "report.html", *plots]}
