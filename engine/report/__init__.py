"""`otl report`: what fp32, fp16 and int8 cost and give, and gradient-free training against backprop.

    config.py      ReportConfig, check_report (every field checked before any work)
    run.py         make_report: the steps, in order, and the context they share
    variants.py    one row per cut x precision x backend; the K and recipe sweeps
    measure.py     build sizes, float feature stores (reused by key), speed, memory, agreement
    fits.py        accuracy over projection seeds (mean +- standard error)
    sensitivity.py int8: which tensor's quantization hurts the output
    backprop.py    the fine-tuned baseline (the reference's backprop.py)
    headline.py    int8 / fp16 vs fp32, gradient-free vs backprop
    write.py       atomic output; render.py (the document), formats.py (Markdown, HTML),
                   plots.py (PNGs), rows.py (row selection and labels both use)
    schema.py      report.json's fields and units
"""
from engine.report.config import ReportConfig, check_report
from engine.report.run import make_report

__all__ = ["ReportConfig", "check_report", "make_report"]
