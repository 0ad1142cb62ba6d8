"""Builds the report: loads the sweep, runs the sections in order, writes Markdown and HTML."""
from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
import uuid
import warnings
from pathlib import Path
from typing import Callable, Sequence

from analysis.report.blocks import Bullets, Heading, Para
from analysis.report.loss_vs_compute import add_loss_vs_compute
from analysis.report.multiplier import add_multiplier, default_budgets
from analysis.report.pairs import choose_comparisons
from analysis.report.parametric import add_parametric
from analysis.report.position_wise import add_position_wise
from analysis.report.probes import add_probes
from analysis.report.render import to_html, to_markdown
from analysis.report.summary import add_summary
from analysis.results import AnalysisError, AnalysisWarning, check_convention, load_sweep


@dataclasses.dataclass(frozen=True)
class ReportResult:
    """Paths written by :func:`write_report` and the notes (warnings) the report lists."""

    markdown: Path
    html: Path
    figures: tuple[Path, ...]
    notes: tuple[str, ...]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _publish(stage: Path, out: Path) -> None:
    """Moves every file of ``stage`` to the same place under ``out`` (renames only: a
    full disk cannot stop it half-way), the report itself last."""
    files = sorted((p for p in stage.rglob("*") if p.is_file()),
                   key=lambda p: p.name in ("report.md", "report.html"))
    for p in files:
        dest = out / p.relative_to(stage)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(p, dest)


def write_report(workdir, out=None, convention: str = "exact", baseline: str | None = None,
                 improved: str | None = None, budgets: Sequence[float] | None = None,
                 bootstrap: int = 200, echo: Callable[[str], None] | None = None,
                 evals=None) -> ReportResult:
    """Analyse the sweep in ``workdir`` and write ``report.md`` / ``report.html`` under ``out``.

    The report is built in a staging folder beside ``out`` and moved into place when
    complete, so a failure (a full disk, an error in a section) leaves the previous
    report, or none, never a mix.

    Args:
        convention: FLOP convention of the figures, fits and budgets (``"exact"`` or
            ``"6nd"``); the totals are given in both.
        baseline, improved: multiplier arms, ``C_baseline(L) / C_improved(L)``. Default:
            the papers' pairs, each arm against its paper's baseline and drawn as that
            paper drew it (:mod:`analysis.report.pairs`: MoBA arms vs full attention,
            Kimi Linear vs MLA, MLA and other arms vs full); either one overrides.
        budgets: baseline computes (PFLOP/s-days) at which multipliers are read
            (default: 4 geometric points over the runs' final computes).
        bootstrap: resamples for every interval (0: point estimates only).
        echo: progress sink (default: stderr).
        evals: the folder whose ``<run>/eval/`` hold the runs' evaluations, when they were
            written outside the sweep (``experiments.evaluate --out``); default ``workdir``.

    Raises:
        AnalysisError: not a sweep directory, no finished runs, an unknown arm, or two
            arms whose fitted losses never overlap (no multiplier without extrapolation).
    """
    echo = echo or _stderr
    check_convention(convention)
    if bootstrap < 0:
        raise AnalysisError(f"bootstrap={bootstrap}; pass 0 (no intervals) or a positive count")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AnalysisWarning)
        sweep = load_sweep(workdir)
        if evals is not None:
            if not Path(evals).is_dir():
                raise AnalysisError(f"evals={evals}: no such directory; give the --out of "
                                    "experiments.evaluate")
            sweep = dataclasses.replace(sweep, eval_source=Path(evals))
        pairs = choose_comparisons(sweep.arms, baseline, improved, sweep.arm_display)
        if budgets is None:
            budgets = default_budgets(sweep, convention)
        budgets = [float(b) for b in budgets]
        if not budgets or any(not (math.isfinite(b) and b > 0) for b in budgets):
            raise AnalysisError(f"budgets {budgets} must be positive PFLOP/s-days values")
        out = Path(out) if out is not None else Path(workdir) / "report"
        out.parent.mkdir(parents=True, exist_ok=True)
        stage = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.partial"
        stage.mkdir()      # an unwritable output folder fails here, before the work
        echo(f"loaded sweep {workdir}: {len(sweep.runs)} runs; report -> {out}")
        try:
            fig_dir = stage / "figures"
            fig_dir.mkdir(parents=True)
            blocks: list = []
            figures: list[Path] = []
            add_summary(blocks, sweep, convention, bootstrap)
            laws, _, other_laws = add_loss_vs_compute(blocks, figures, sweep, fig_dir, convention,
                                                      bootstrap, echo)
            add_multiplier(blocks, figures, sweep, fig_dir, convention, bootstrap, pairs, laws,
                           budgets, echo, other_laws=other_laws)
            add_position_wise(blocks, figures, sweep, fig_dir, convention, bootstrap, echo)
            add_probes(blocks, sweep)
            add_parametric(blocks, sweep, bootstrap, echo)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
    try:
        notes = tuple(dict.fromkeys(str(w.message) for w in caught
                                    if issubclass(w.category, AnalysisWarning)))
        for note in notes:
            echo(f"note: {note}")
        for w in caught:
            if not issubclass(w.category, AnalysisWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        blocks.append(Heading(2, "Notes"))
        blocks.append(Bullets(notes) if notes else Para("No warnings: every run and fit was used."))
        title = f"Scaling report: {Path(workdir).resolve().name}"
        blocks.insert(0, Heading(1, title))
        (stage / "report.md").write_text(to_markdown(blocks, stage))
        (stage / "report.html").write_text(to_html(blocks, title))
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    md_path, html_path = out / "report.md", out / "report.html"
    echo(f"wrote {md_path} and {html_path}")
    return ReportResult(md_path, html_path, tuple(out / f.relative_to(stage) for f in figures), notes)
