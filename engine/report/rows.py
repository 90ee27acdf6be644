"""The report's rows as both its plots and its tables name and pick them."""
from __future__ import annotations

import math


def ok(rows) -> list:
    """The rows (variants, sweeps, sensitivity, baseline) whose status is "ok"."""
    return [r for r in rows or [] if r and r.get("status") == "ok"]


def cut_name(cut) -> str:
    """A cut as written everywhere: None (the model's default cut) reads "default cut"."""
    return "default cut" if cut is None else str(cut)


def prec_label(precision, emulated) -> str:
    """fp16 -> "fp16 (emulated)" when the variant only emulates it."""
    return f"{precision} (emulated)" if emulated else str(precision)


def short_name(name: str, n: int = 36) -> str:
    """A tensor name cut to n characters, keeping its (distinctive) end."""
    name = str(name)
    return name if len(name) <= n else "…" + name[-(n - 1):]


def worst_tensors(entry: dict) -> list:
    """The entry's ten worst tensors (rows), worst first, those with an output SQNR."""
    by_name = {t.get("name"): t for t in entry.get("tensors") or []}
    rows = [by_name[n] for n in entry.get("worst") or [] if n in by_name]
    if not rows:
        rows = sorted(by_name.values(), key=lambda t: math.inf if t.get("output_sqnr_db") is None
                      else t["output_sqnr_db"])[:10]
    return [t for t in rows if t.get("output_sqnr_db") is not None]


def unique(items) -> list:
    """The items in first-seen order, each once."""
    return list(dict.fromkeys(items))
