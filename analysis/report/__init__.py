"""One-page report of a finished sweep: runs, compute, figures, fitted laws, multipliers.

The command (:mod:`~analysis.report.cli`; ``python -m experiments.report`` is the same)::

    python -m analysis.report --workdir=runs/scaling
    python -m analysis.report --workdir=runs/scaling --convention=6nd --baseline=full
    python -m analysis.report --workdir=runs/scaling --improved=moba --budgets=1e-9,1e-8
    python -m analysis.report --workdir=runs/scaling --bootstrap=500 --out=/tmp/scaling_report

writes ``OUT/report.md``, ``OUT/report.html`` (self-contained: the figures are embedded
as base64 PNGs) and ``OUT/figures/*.{png,pdf}``; ``OUT`` defaults to ``WORKDIR/report``.
About 5 s for a small sweep with 200 bootstrap resamples, plus 10-20 s per arm that has
enough runs for the Chinchilla fit.

From a notebook::

    from analysis import report
    res = report.write_report("runs/scaling", bootstrap=100)
    print(res.markdown.read_text())

The report is built once as a list of blocks (:mod:`~analysis.report.blocks`: headings,
paragraphs, tables, figures) by one module per section (:mod:`~analysis.report.summary`,
:mod:`~analysis.report.loss_vs_compute`, :mod:`~analysis.report.multiplier` (with
:mod:`~analysis.report.noise`: final-point standard errors and the envelope's noise shift),
:mod:`~analysis.report.position_wise`, :mod:`~analysis.report.parametric`), in the order
of :mod:`~analysis.report.build`, and rendered twice (:mod:`~analysis.report.render`), to
Markdown and to HTML, so the two always say the same thing. Arms are named as the sweep's
``results.jsonl`` declares (``arm_display``), else by their own name; which arms are
compared, and how each pair is drawn, is :mod:`~analysis.report.pairs` (the papers' pairs).
"""
from analysis.report.blocks import Bullets, Heading, Image, Para, Table
from analysis.report.build import ReportResult, write_report
from analysis.report.multiplier import (compute_range, default_baseline, default_budgets,
                                        format_interval, kimi_source, multiplier_verdict)
from analysis.report.parametric import (MIN_CHINCHILLA_RUNS, MIN_DISTINCT_N_D, chinchilla_inputs,
                                        chinchilla_skip_reason)
from analysis.report.render import text_table, to_html, to_markdown
from analysis.report.summary import runs_table, total_compute

__all__ = [
    "write_report", "ReportResult", "Heading", "Para", "Bullets", "Table", "Image", "to_markdown",
    "to_html", "text_table", "total_compute", "runs_table", "default_baseline", "default_budgets",
    "compute_range", "kimi_source", "format_interval", "multiplier_verdict", "MIN_CHINCHILLA_RUNS",
    "MIN_DISTINCT_N_D",
    "chinchilla_skip_reason", "chinchilla_inputs",
]
