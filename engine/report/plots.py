"""The report's plots: one PNG per figure under plots/, drawn with matplotlib's Agg backend
(imported only when a plot is drawn). A figure with no data is skipped, not drawn empty.

    from engine.report.plots import make_plots
    drawn, failed = make_plots(report, out_dir / "plots")
    # drawn: {"plots/accuracy_by_precision.png": "Test accuracy by precision", ...}; failed: {name: error}
"""
from __future__ import annotations

import math
from pathlib import Path

from engine.report.rows import cut_name, ok, prec_label, short_name, unique, worst_tensors
from engine.report.schema import STAGES

DPI = 110


def _acc(v: dict) -> tuple:
    """(mean_pct, se_pct) of a variant, Nones when it has no accuracy."""
    a = v.get("accuracy") or {}
    return a.get("mean_pct"), a.get("se_pct")


def _colors(plt, keys) -> dict:
    """{key: colour}, tab10 in order."""
    cmap = plt.get_cmap("tab10")
    return {k: cmap(i % 10) for i, k in enumerate(keys)}


def _floor(values) -> float:
    """A y (or x) axis start a little below the lowest accuracy, so that differences show."""
    return max(0.0, 5 * math.floor((min(values) - 5) / 5))


def accuracy_by_precision(rep, plt):
    """Bars per precision x backend, grouped by cut; emulated hatched; failed variants marked."""
    variants = [v for v in rep.get("variants") or [] if v]
    means = [m for m in (_acc(v)[0] for v in variants) if m is not None]
    if not means:
        return None
    cuts = unique(v.get("cut") for v in variants)
    combos = unique((v.get("precision"), v.get("backend")) for v in variants)
    floor, top = _floor(means), min(100.0, max(means) + 4)
    width = 0.8 / len(combos)
    fig, ax = plt.subplots(figsize=(max(7.0, 1.5 + 0.45 * len(cuts) * len(combos)), 5))
    for j, (color, (prec, backend)) in enumerate(zip(_colors(plt, combos).values(), combos)):
        rows = {v.get("cut"): v for v in variants if (v.get("precision"), v.get("backend")) == (prec, backend)}
        emulated = any(v.get("emulated") for v in rows.values())
        for i, cut in enumerate(cuts):
            v, x = rows.get(cut), i - 0.4 + width * (j + 0.5)
            mean, se = _acc(v) if v else (None, None)
            if mean is not None:
                ax.bar(x, mean - floor, width, bottom=floor, yerr=se or 0, capsize=3, color=color,
                       hatch="//" if emulated else None, edgecolor="black", linewidth=0.5)
            elif v is not None:
                ax.text(x, floor + 0.03 * (top - floor), "failed", rotation=90, ha="center", va="bottom",
                        color="#b00020", fontsize=9)
        failed = "" if any(_acc(v)[0] is not None for v in rows.values()) else " (failed)"
        ax.bar(math.nan, 0, color=color, hatch="//" if emulated else None, edgecolor="black", linewidth=0.5,
               label=f"{prec_label(prec, emulated)} / {backend}{failed}")
    ax.set_xticks(range(len(cuts)), [cut_name(c) for c in cuts])
    ax.set_ylim(floor, top)
    ax.set(xlabel="cut", ylabel="test accuracy (%)",
           title="Test accuracy by cut and precision (mean ± s.e. over projection seeds)")
    ax.legend(title="precision / backend", fontsize=8, loc="upper left", ncol=2)
    return fig


def time_by_stage(rep, plt):
    """Stacked horizontal bars of each ok variant's stage times (schema.STAGES order)."""
    rows = [v for v in ok(rep.get("variants")) if v.get("timings_s")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(10, 1.8 + 0.42 * len(rows)))
    left, y = [0.0] * len(rows), range(len(rows))
    cmap = plt.get_cmap("tab20")
    for k, stage in enumerate(STAGES):
        widths = [float(v["timings_s"].get(stage) or 0.0) for v in rows]
        if any(widths):
            ax.barh(y, widths, left=left, color=cmap(k % 20), label=stage, edgecolor="white", linewidth=0.4)
            left = [a + b for a, b in zip(left, widths)]
    for i, v in enumerate(rows):
        total = v["timings_s"].get("total")
        ax.text(left[i], i, f" {total:.1f} s total" if total is not None else "", va="center", fontsize=8)
    ax.set_yticks(list(y), [f"{cut_name(v.get('cut'))} {prec_label(v.get('precision'), v.get('emulated'))} "
                            f"{v.get('backend')}" for v in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, max(left) * 1.18 or 1)
    ax.set(xlabel="time (s)", title="Where each variant's time goes (fit stages summed over seeds)")
    ax.legend(title="stage", fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


def _sizes(rep) -> dict:
    """{cut: backbone parameters in millions}, from the variants, else from the baseline."""
    sizes = {b.get("cut"): b["parameters"] / 1e6 for b in ok(rep.get("baseline")) if b.get("parameters")}
    for v in ok(rep.get("variants")):
        if (v.get("backbone") or {}).get("parameters"):
            sizes[v.get("cut")] = v["backbone"]["parameters"] / 1e6
    return sizes


def _cut_points(rep) -> tuple[list, list]:
    """Per cut, sorted by size: gradient-free (size, mean, se, training_s, cut) and backprop
    (size, best accuracy, best training_s, cut)."""
    sizes, gf, bp = _sizes(rep), {}, {}
    for v in ok(rep.get("variants")):
        if v.get("precision") == "fp32" and _acc(v)[0] is not None and v.get("cut") in sizes:
            gf.setdefault(v.get("cut"), (sizes[v.get("cut")], *_acc(v), v.get("training_s"), v.get("cut")))
    for b in ok(rep.get("baseline")):
        best = b.get("best") or {}
        if best.get("accuracy_pct") is not None and b.get("cut") in sizes:
            bp[b.get("cut")] = (sizes[b.get("cut")], best["accuracy_pct"], best.get("training_s"), b.get("cut"))
    return sorted(gf.values(), key=lambda p: p[0]), sorted(bp.values(), key=lambda p: p[0])


def cut_size(rep, plt):
    """Accuracy and training time against backbone size, gradient-free vs backprop (reference Figs 5-6)."""
    gf, bp = _cut_points(rep)
    if not gf and not bp:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.8))
    if gf:
        a1.errorbar([p[0] for p in gf], [p[1] for p in gf], yerr=[p[2] or 0 for p in gf], fmt="o-", capsize=3,
                    label="gradient-free (fp32 features, optical projection, ridge)")
        for p in gf:
            a1.annotate(cut_name(p[4]), (p[0], p[1]), textcoords="offset points", xytext=(5, 5), fontsize=8)
        timed = [p for p in gf if p[3]]
        a2.plot([p[0] for p in timed], [p[3] for p in timed], "o-", label="gradient-free")
    if bp:
        a1.plot([p[0] for p in bp], [p[1] for p in bp], "s--", label="backprop (fine-tuned, best epoch)")
        for p in bp:
            a1.annotate(cut_name(p[3]), (p[0], p[1]), textcoords="offset points", xytext=(5, -12), fontsize=8)
        timed = [p for p in bp if p[2]]
        a2.plot([p[0] for p in timed], [p[2] for p in timed], "s--", label="backprop (to its best epoch)")
    a1.set(xlabel="backbone size (million parameters)", ylabel="test accuracy (%)",
           title="Accuracy vs backbone size")
    a2.set_yscale("log")
    a2.set(xlabel="backbone size (million parameters)", ylabel="training time (s, log scale)",
           title="Training time vs backbone size")
    for ax in (a1, a2):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    return fig


def accuracy_vs_components(rep, plt):
    """Accuracy against the number of optical components K, one line per cut (and precision)."""
    rows = [r for r in ok(rep.get("components")) if r.get("n_components") and r.get("mean_pct") is not None]
    if not rows:
        return None
    keys = unique((r.get("cut"), r.get("precision")) for r in rows)
    several = len({k[1] for k in keys}) > 1
    fig, ax = plt.subplots(figsize=(8, 5))
    for key in keys:
        pts = sorted((r["n_components"], r["mean_pct"], r.get("se_pct") or 0) for r in rows
                     if (r.get("cut"), r.get("precision")) == key)
        label = cut_name(key[0]) + (f" {key[1]}" if several else "")
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], fmt="o-", capsize=3,
                    label=label)
    ks = sorted({r["n_components"] for r in rows})
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.set(xlabel="optical components K (count, log2 scale)", ylabel="test accuracy (%)",
           title="Accuracy vs number of optical components (mean ± s.e.)")
    ax.legend(title="cut", fontsize=8)
    return fig


def _sensitivity_panel(ax, entry: dict) -> None:
    rows = worst_tensors(entry)
    below = (entry.get("first_below") or {}).get("name")
    ax.barh(range(len(rows)), [t["output_sqnr_db"] for t in rows],
            color=["#d62728" if t.get("name") == below else "#1f77b4" for t in rows])
    ax.set_yticks(range(len(rows)), [f"{short_name(t.get('name'))} ({t.get('op')})" for t in rows], fontsize=8)
    ax.invert_yaxis()
    if entry.get("output_sqnr_db_all") is not None:
        ax.axvline(entry["output_sqnr_db_all"], color="black", linestyle="--",
                   label=f"whole int8 model: {entry['output_sqnr_db_all']:.1f} dB")
        ax.legend(fontsize=8, loc="lower right")
    fb = entry.get("first_below")
    note = (f"first tensor with cosine < {entry.get('threshold')}: {short_name(fb.get('name'), 30)} "
            f"(order {fb.get('order')}){' (red)' if below in {t.get('name') for t in rows} else ''}"
            if fb else f"no tensor with cosine < {entry.get('threshold')}")
    ax.set_title(f"{cut_name(entry.get('cut'))} ({entry.get('backend')}), {entry.get('images')} images\n{note}",
                 fontsize=9)
    ax.set_xlabel("output SQNR, only this tensor int8 (dB; lower = worse)")


def int8_sensitivity(rep, plt):
    """The ten worst int8 tensors by output SQNR, one panel per sensitivity entry (at most four)."""
    entries = [e for e in ok(rep.get("sensitivity")) if worst_tensors(e)][:4]
    if not entries:
        return None
    cols = min(2, len(entries))
    rows = math.ceil(len(entries) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 4.4 * rows), squeeze=False)
    for ax, entry in zip(axes.flat, entries):
        _sensitivity_panel(ax, entry)
    for ax in list(axes.flat)[len(entries):]:
        ax.set_visible(False)
    fig.suptitle("int8 sensitivity: the ten tensors whose quantization hurts the output most")
    return fig


def backprop_vs_gradient_free(rep, plt):
    """Accuracy against training time: backprop's epochs per cut, gradient-free fp32/int8 points."""
    curves = [b for b in ok(rep.get("baseline")) if [e for e in b.get("epochs") or [] if e.get("training_s")]]
    points = [v for v in ok(rep.get("variants")) if v.get("precision") in ("fp32", "int8")
              and _acc(v)[0] is not None and v.get("training_s")]
    if not curves and not points:
        return None
    colors = _colors(plt, unique([b.get("cut") for b in curves] + [v.get("cut") for v in points]))
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for b in curves:
        eps = [e for e in b["epochs"] if e.get("training_s") and e.get("accuracy_pct") is not None]
        ax.plot([e["training_s"] for e in eps], [e["accuracy_pct"] for e in eps], "o-", color=colors[b.get("cut")],
                label=f"backprop {cut_name(b.get('cut'))} (epochs 1–{len(eps)})")
    for v in points:
        mean, se = _acc(v)
        ax.errorbar(v["training_s"], mean, yerr=se or 0, fmt="D" if v["precision"] == "fp32" else "^", capsize=3,
                    markersize=8, color=colors[v.get("cut")], markeredgecolor="black",
                    label=f"gradient-free {cut_name(v.get('cut'))} {v['precision']} ({v.get('backend')})")
    ax.set_xscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.set(xlabel="training time (s, log scale)", ylabel="test accuracy (%)",
           title="Backprop vs gradient-free training: accuracy vs training time")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    return fig


def recipes(rep, plt):
    """Accuracy per recipe (pool / encoder / projection / K), bars per cut."""
    rows = [r for r in rep.get("recipes") or [] if r]
    means = [r["mean_pct"] for r in ok(rows) if r.get("mean_pct") is not None]
    if not means:
        return None

    def label(r):
        return f"{r.get('pool')} / {r.get('encoder')} / {r.get('projection')} / K={r.get('n_components') or '—'}"
    labels, cuts = unique(label(r) for r in rows), unique(r.get("cut") for r in rows)
    floor, height = _floor(means), 0.8 / len(cuts)
    fig, ax = plt.subplots(figsize=(10, 1.8 + len(labels) * (0.22 * len(cuts) + 0.25)))
    for j, (cut, color) in enumerate(_colors(plt, cuts).items()):
        for r in (r for r in rows if r.get("cut") == cut):
            y = labels.index(label(r)) - 0.4 + height * (j + 0.5)
            if r.get("status") == "ok" and r.get("mean_pct") is not None:
                ax.barh(y, r["mean_pct"] - floor, height, left=floor, xerr=r.get("se_pct") or 0, capsize=2, color=color)
            else:
                ax.text(floor + 0.3, y, "failed", va="center", color="#b00020", fontsize=8)
        ax.barh(math.nan, 0, color=color, label=cut_name(cut))
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(floor, min(100.0, max(means) + 3))
    ax.set(xlabel="test accuracy (%)", title="Recipes: pool / encoder / projection / K (mean ± s.e.)")
    ax.legend(title="cut", fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig


PLOTS = (("accuracy_by_precision", "Test accuracy by precision", accuracy_by_precision),
         ("time_by_stage", "Time by stage", time_by_stage),
         ("cut_size", "Accuracy and training time vs backbone size", cut_size),
         ("accuracy_vs_components", "Accuracy vs optical components", accuracy_vs_components),
         ("int8_sensitivity", "int8 sensitivity per tensor", int8_sensitivity),
         ("backprop_vs_gradient_free", "Backprop vs gradient-free", backprop_vs_gradient_free),
         ("recipes", "Accuracy per recipe", recipes))


def make_plots(rep: dict, plots_dir: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Draw every plot that has data into plots_dir. Returns ({relative path "plots/NAME.png": title}
    of those drawn, {NAME: error} of those that raised): a plot that cannot be drawn is reported,
    not allowed to lose the rest of the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    drawn, failed = {}, {}
    for name, title, draw in PLOTS:
        try:
            fig = draw(rep, plt)
            if fig is None:
                continue
            plots_dir.mkdir(parents=True, exist_ok=True)
            fig.tight_layout()
            fig.savefig(plots_dir / f"{name}.png", dpi=DPI, bbox_inches="tight")
            drawn[f"{plots_dir.name}/{name}.png"] = title
        except Exception as e:  # noqa: BLE001 - said in the report; the other plots and tables go on
            failed[name] = f"{type(e).__name__}: {e}"
            (plots_dir / f"{name}.png").unlink(missing_ok=True)
        finally:
            plt.close("all")
    return drawn, failed
