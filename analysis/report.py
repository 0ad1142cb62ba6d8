"""One-page report of a finished sweep: runs, compute, figures, fitted laws, multipliers.

    python -m analysis.report --workdir=runs/scaling
    python -m analysis.report --workdir=runs/scaling --convention=6nd --baseline=full
    python -m analysis.report --workdir=runs/scaling --improved=moba --budgets=1e-9,1e-8
    python -m analysis.report --workdir=runs/scaling --bootstrap=500 --out=/tmp/scaling_report

Writes ``OUT/report.md``, ``OUT/report.html`` (self-contained: the figures are embedded
as base64 PNGs) and ``OUT/figures/*.{png,pdf}``; ``OUT`` defaults to ``WORKDIR/report``.
About 5 s for a small sweep with 200 bootstrap resamples, plus 10-20 s per arm that has
enough runs for the Chinchilla fit. A directory that is not a finished sweep, or arms whose fitted
losses never overlap, end with a one-line ``error: ...`` and exit status 2.

From a notebook::

    from analysis import report
    res = report.write_report("runs/scaling", bootstrap=100)
    print(res.markdown.read_text())

The report is built once as a list of blocks (headings, paragraphs, tables, figures)
and rendered twice, to Markdown and to HTML, so the two always say the same thing.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import math
import re
import sys
import warnings
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from analysis import fits, plots, position
from analysis.results import (CONVENTIONS, AnalysisError, AnalysisWarning, Sweep, _check_convention,
                              load_sweep)

EXIT_ANALYSIS_ERROR = 2  # same status as the other entry points' user errors
# The parametric law has 5 parameters; analysis.fits.fit_chinchilla needs 6 points.
MIN_CHINCHILLA_RUNS = 6
MIN_DISTINCT_N_D = 3
_CONV_NAME = {"exact": "exact", "6nd": "6ND"}

# ------------------------------------------------------------------ document blocks


@dataclasses.dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclasses.dataclass(frozen=True)
class Para:
    text: str


@dataclasses.dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclasses.dataclass(frozen=True)
class Image:
    path: Path
    caption: str


def _md_cell(s: str) -> str:
    return str(s).replace("|", "\\|").replace("\n", " ")


def to_markdown(blocks: Sequence, base: Path) -> str:
    """Markdown text of ``blocks``; images are linked relative to ``base`` (the report's folder)."""
    out = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"{'#' * b.level} {b.text}")
        elif isinstance(b, Para):
            out.append(b.text)
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {i}" for i in b.items))
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(map(_md_cell, b.headers)) + " |",
                     "|" + "|".join("---" for _ in b.headers) + "|"]
            lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in b.rows]
            out.append("\n".join(lines))
        elif isinstance(b, Image):
            rel = Path(b.path).relative_to(base).as_posix()
            out.append(f"![{b.caption}]({rel})\n\n*{b.caption}*")
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    """Escape, then render the two inline marks the report uses: `code` and **bold**."""
    s = html.escape(text, quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)


_CSS = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #222; line-height: 1.45; }
h1, h2, h3 { color: #123; } h2 { border-bottom: 1px solid #ccd; padding-bottom: 0.2em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccd; padding: 0.25em 0.6em; text-align: right; }
th { background: #eef1f6; } td:first-child, th:first-child { text-align: left; }
tr:nth-child(even) td { background: #f8f9fb; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
code { background: #f3f3f3; padding: 0 0.2em; border-radius: 3px; }
"""


def to_html(blocks: Sequence, title: str) -> str:
    """A self-contained HTML page of ``blocks``: inline CSS, PNGs embedded as base64."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{_inline_html(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            parts.append(f"<p>{_inline_html(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{_inline_html(h)}</th>" for h in b.headers)
            body = "".join("<tr>" + "".join(f"<td>{_inline_html(c)}</td>" for c in r) + "</tr>"
                           for r in b.rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif isinstance(b, Image):
            data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
            parts.append(f'<figure><img alt="{html.escape(b.caption)}" src="data:image/png;base64,{data}">'
                         f"<figcaption>{_inline_html(b.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# --------------------------------------------------- pieces shared with the notebook


def _g(x, digits: int = 3) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def _with_ci(value, ci, digits: int = 4) -> str:
    s = _g(value, digits)
    return s if ci is None else f"{s} [{_g(ci[0], digits)}, {_g(ci[1], digits)}]"


def default_baseline(arms: Sequence[str]) -> str:
    """The multiplier's baseline: ``full`` if present, else ``mla``, else the first arm."""
    for name in ("full", "mla"):
        if name in arms:
            return name
    return arms[0]


def total_compute(sweep: Sweep) -> dict[str, float]:
    """Training compute of all runs, in PFLOP/s-days, per FLOP convention present."""
    return {c: float(sum(r.final_compute(c) for r in sweep.runs)) for c in CONVENTIONS
            if all(c in r.flops for r in sweep.runs)}


def runs_table(sweep: Sweep) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(headers, rows): one row per run with its size, tokens, compute and final loss."""
    convs = [c for c in CONVENTIONS if all(c in r.flops for r in sweep.runs)]
    headers = ("run", "arm", "size", "non-emb. params", "tokens",
               *[f"C {_CONV_NAME[c]} (PFLOP/s-days)" for c in convs], "final val loss")
    rows = []
    for r in sweep.runs:
        rows.append((r.run, r.arm, r.size,
                     "–" if r.n_params_nonembed is None else f"{r.n_params_nonembed:,}",
                     "–" if r.total_tokens is None else f"{r.total_tokens:,}",
                     *[_g(r.final_compute(c)) for c in convs], f"{r.final_loss:.4f}"))
    return headers, rows


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Fixed-width plain-text table (for printing in a terminal or notebook)."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    fmt = lambda row: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                for i, (c, w) in enumerate(zip(row, widths)))
    return "\n".join([fmt(headers), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def default_budgets(sweep: Sweep, convention: str = "exact", n: int = 4) -> list[float]:
    """``n`` geometric points from the smallest to the largest run's final compute."""
    C = [r.final_compute(convention) for r in sweep.runs]
    lo, hi = min(C), max(C)
    return [lo] if hi <= lo else [float(x) for x in np.geomspace(lo, hi, n)]


def chinchilla_skip_reason(sweep: Sweep, arm: str) -> str | None:
    """Why arm ``arm`` cannot get a Chinchilla approach-3 fit, or ``None`` when it can."""
    runs = sweep.by_arm(arm)
    if len(runs) < MIN_CHINCHILLA_RUNS:
        return (f"{len(runs)} run(s); the 5-parameter law L(N, D) needs at least "
                f"{MIN_CHINCHILLA_RUNS} finished runs per arm")
    if any(r.n_params_nonembed is None or r.total_tokens is None for r in runs):
        return "some runs lack n_params_nonembed or tokens in results.jsonl"
    n_N = len({r.n_params_nonembed for r in runs})
    n_D = len({r.total_tokens for r in runs})
    if n_N < MIN_DISTINCT_N_D or n_D < MIN_DISTINCT_N_D:
        return (f"{n_N} distinct model size(s) and {n_D} distinct token count(s); "
                f"need at least {MIN_DISTINCT_N_D} of each")
    return None


def chinchilla_inputs(sweep: Sweep, arm: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N non-embedding params, D tokens, final loss) per run of ``arm``."""
    runs = sweep.by_arm(arm)
    return (np.array([r.n_params_nonembed for r in runs], float),
            np.array([r.total_tokens for r in runs], float),
            np.array([r.final_loss for r in runs], float))


def multiplier_verdict(ratio: float, lo: float | None, hi: float | None, arm: str,
                       min_runs: int | None = None) -> str:
    """Plain-words reading of one multiplier value and its interval.

    ``min_runs``: the fewer runs of the two arms. Below 3 the bootstrap over runs has
    too few distinct resamples for its interval to mean anything, so no difference is
    claimed whatever the interval says.
    """
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "no interval (no bootstrap): no difference claimed"
    if min_runs is not None and min_runs < 3:
        return (f"no difference claimed: an arm has {min_runs} run(s), too few for a "
                "meaningful bootstrap interval")
    if lo <= 1.0 <= hi:
        return "no difference resolved (interval includes 1.0)"
    better = "less" if lo > 1.0 else "more"
    return f"{plots.display_name(arm)} needs {better} compute for the same loss"


def compute_range(sweep: Sweep, convention: str = "exact") -> tuple[float, float]:
    """(smallest, largest) final compute of the sweep's runs in PFLOP/s-days, never empty."""
    C = [r.final_compute(convention) for r in sweep.runs]
    lo, hi = min(C), max(C)
    return (lo, hi) if hi > lo else (lo / 2, hi * 2)


def kimi_source(sweep: Sweep, laws, convention: str = "exact"):
    """What to give :func:`plots.plot_kimi_style`, and a caption fragment saying what it shows.

    The sweep itself (final loss per run, a law through those points) when every arm has
    3+ runs at 2+ distinct computes; otherwise ``laws`` (e.g. the envelope laws of
    :func:`plots.plot_loss_vs_compute`), drawn without markers.
    """
    for arm in sweep.arms:
        C, _, _ = sweep.final_points(arm, convention)
        if len(C) < 3 or len(np.unique(C)) < 2:
            return dict(laws), ("the envelope laws only (an arm has fewer than 3 runs, too few for a "
                                "law through final points, so no markers)")
    return sweep, "final loss of each run (markers) and the law fitted through them"


# ------------------------------------------------------------------------ the report


@dataclasses.dataclass(frozen=True)
class ReportResult:
    """Paths written by :func:`write_report` and the notes (warnings) the report lists."""

    markdown: Path
    html: Path
    figures: tuple[Path, ...]
    notes: tuple[str, ...]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _choose_pairs(arms, baseline, improved) -> list[tuple[str, str]]:
    for name in (baseline, improved):
        if name is not None and name not in arms:
            raise AnalysisError(f"arm {name!r} is not in the sweep (its arms: {', '.join(arms)}); "
                                "pass --baseline/--improved with one of those")
    if len(arms) < 2:
        return []
    base = baseline or default_baseline(arms)
    if improved is not None:
        if improved == base:
            raise AnalysisError(f"--improved={improved} is also the baseline; pick another arm")
        return [(base, improved)]
    return [(base, a) for a in arms if a != base]


def write_report(workdir, out=None, convention: str = "exact", baseline: str | None = None,
                 improved: str | None = None, budgets: Sequence[float] | None = None,
                 bootstrap: int = 200, echo: Callable[[str], None] | None = None) -> ReportResult:
    """Analyse the sweep in ``workdir`` and write ``report.md`` / ``report.html`` under ``out``.

    Args:
        convention: FLOP convention of the figures, fits and budgets (``"exact"`` or
            ``"6nd"``); the totals are given in both.
        baseline, improved: multiplier arms, ``C_baseline(L) / C_improved(L)``. Default
            baseline ``full`` (else ``mla``, else the first arm) against every other arm.
        budgets: baseline computes (PFLOP/s-days) at which multipliers are read
            (default: 4 geometric points over the runs' final computes).
        bootstrap: resamples for every interval (0: point estimates only).
        echo: progress sink (default: stderr).

    Raises:
        AnalysisError: not a sweep directory, no finished runs, an unknown arm, or two
            arms whose fitted losses never overlap (no multiplier without extrapolation).
    """
    echo = echo or _stderr
    _check_convention(convention)
    if bootstrap < 0:
        raise AnalysisError(f"bootstrap={bootstrap}; pass 0 (no intervals) or a positive count")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", AnalysisWarning)
        echo(f"loading sweep {workdir}")
        sweep = load_sweep(workdir)
        pairs = _choose_pairs(sweep.arms, baseline, improved)
        if budgets is None:
            budgets = default_budgets(sweep, convention)
        budgets = [float(b) for b in budgets]
        if not budgets or any(not (math.isfinite(b) and b > 0) for b in budgets):
            raise AnalysisError(f"budgets {budgets} must be positive PFLOP/s-days values")
        out = Path(out) if out is not None else Path(workdir) / "report"
        fig_dir = out / "figures"
        fig_dir.mkdir(parents=True, exist_ok=True)
        blocks: list = []
        figures: list[Path] = []
        _summary_section(blocks, sweep, convention, bootstrap)
        laws, envs = _loss_vs_compute_section(blocks, figures, sweep, fig_dir, convention, bootstrap, echo)
        _multiplier_section(blocks, figures, sweep, fig_dir, convention, bootstrap, pairs, laws,
                            budgets, echo)
        _position_section(blocks, figures, sweep, fig_dir, convention, bootstrap, echo)
        _chinchilla_section(blocks, sweep, bootstrap, echo)
    notes = tuple(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, AnalysisWarning)))
    for note in notes:
        echo(f"note: {note}")
    for w in caught:
        if not issubclass(w.category, AnalysisWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    blocks.append(Heading(2, "Notes"))
    blocks.append(Bullets(notes) if notes else Para("No warnings: every run and fit was used."))

    title = f"Scaling report: {Path(workdir).resolve().name}"
    blocks.insert(0, Heading(1, title))
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(to_markdown(blocks, out))
    html_path.write_text(to_html(blocks, title))
    echo(f"wrote {md_path} and {html_path}")
    return ReportResult(md_path, html_path, tuple(figures), notes)


def _summary_section(blocks, sweep: Sweep, convention: str, bootstrap: int) -> None:
    totals = total_compute(sweep)
    tot = "; ".join(f"{_g(v, 4)} PFLOP/s-days ({_CONV_NAME[c]})" for c, v in totals.items())
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    items = [f"Sweep directory: `{sweep.source}`",
             f"Finished runs used: **{len(sweep.runs)}** in {len(sweep.arms)} arm(s) "
             f"({', '.join(f'{a}: {len(sweep.by_arm(a))}' for a in sweep.arms)})",
             f"Total training compute: {tot}",
             f"Figures, fits and budgets use the **{_CONV_NAME[convention]}** FLOP convention; "
             f"intervals are 95% bootstrap percentiles over runs ({bootstrap} resamples)"
             if bootstrap else f"Figures, fits and budgets use the **{_CONV_NAME[convention]}** "
                               "FLOP convention; no bootstrap, so no intervals",
             f"Generated {now}"]
    if sweep.skipped:
        items.append("Skipped runs: " + "; ".join(f"{k} ({v})" for k, v in sweep.skipped.items()))
    blocks += [Heading(2, "Summary"), Bullets(tuple(items)), Heading(2, "Runs")]
    headers, rows = runs_table(sweep)
    blocks.append(Table(headers, tuple(rows)))
    checks = []
    for arm in sweep.arms:
        C, _, _ = sweep.final_points(arm, convention)
        span = C.max() / C.min()
        ok = len(C) >= 4 and span >= 10
        checks.append(f"{arm}: {len(C)} run(s) spanning {span:.3g}x in compute"
                      + ("" if ok else " (scaling.md asks for at least 4 sizes over ~10x; "
                                       "treat the fits as indicative)"))
    blocks += [Para("Design check per arm:"), Bullets(tuple(checks))]


def _loss_vs_compute_section(blocks, figures, sweep, fig_dir, convention, bootstrap, echo):
    echo(f"fitting L = a C^b on each arm's lower envelope ({bootstrap} bootstrap resamples per arm)")
    res = plots.plot_loss_vs_compute(sweep, fig_dir / "loss_vs_compute", convention=convention,
                                     bootstrap=bootstrap)
    figures.append(res.paths[0])
    blocks += [Heading(2, "Loss vs compute"),
               Image(res.paths[0], "Validation loss along training for every run (light = small "
                                   "model); dashed: the power law fitted to each arm's lower "
                                   f"envelope (dots). Compute in PFLOP/s-days, {_CONV_NAME[convention]} FLOPs."),
               Heading(3, "Fitted laws: L = a C^b on the lower envelope")]
    rows = []
    for arm in sweep.arms:
        law = res.fits.get(arm)
        if law is None:
            rows.append((arm, "no fit (see Notes)", "–", "–", "–", "–", "–"))
            continue
        rows.append((arm, law.label(), _with_ci(law.a, law.a_ci), _with_ci(law.b, law.b_ci, 3),
                     str(len(law.residuals)), _g(law.rmse), f"{_g(law.C_range[0])} – {_g(law.C_range[1])}"))
    blocks += [Table(("arm", "law", "a [95% CI]", "b [95% CI]", "envelope points", "residual RMS (log)",
                      "fitted C range"), tuple(rows)),
               Para("The envelope is the best loss any run of the arm reached at each compute, "
                    "from the smallest run's final compute on (Chinchilla approach 1). Residual "
                    "RMS is in natural-log units (0.01 = 1% of the loss).")]

    echo(f"fitting L = E + A C^-alpha on the same envelopes ({bootstrap} resamples)")
    rows, reasons = [], []
    for arm in sweep.arms:
        env = (res.envelopes or {}).get(arm)
        if env is None:
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                off = fits.fit_power_law_offset(env.C, env.L, runs=env.run, bootstrap=bootstrap)
        except AnalysisError as e:
            reasons.append(f"{arm}: not fitted, {e}")
            continue
        cis = off.cis or {}
        rms = float(np.sqrt(np.mean(off.residuals ** 2)))
        if off.E < 1e-6 * float(env.L.min()):
            reasons.append(f"{arm}: E sits at its lower bound 0, i.e. the envelope shows no curvature "
                           "towards an irreducible loss; the pure power law describes it as well")
        rows.append((arm, _with_ci(off.E, cis.get("E")), _with_ci(off.A, cis.get("A")),
                     _with_ci(off.alpha, cis.get("alpha"), 3), str(len(env.C)), _g(rms)))
    blocks.append(Heading(3, "Offset law: L = E + A C^-alpha (same envelope points)"))
    if rows:
        blocks.append(Table(("arm", "E [95% CI]", "A [95% CI]", "alpha [95% CI]", "points",
                             "residual RMS (log)"), tuple(rows)))
        blocks.append(Para("Three parameters are weakly identified unless the envelope visibly "
                           "curves; wide intervals on E are expected on a short compute range."))
    if reasons:
        blocks.append(Bullets(tuple(reasons)))
    return res.fits, res.envelopes


def _multiplier_section(blocks, figures, sweep, fig_dir, convention, bootstrap, pairs, laws, budgets, echo):
    blocks.append(Heading(2, "Compute-efficiency multiplier"))
    if not pairs:
        blocks.append(Para(f"The sweep has one arm ({sweep.arms[0]}): no multiplier and no "
                           "Kimi-style comparison."))
        return
    blocks.append(Para("Multiplier of arm B over baseline A at A's compute C: C / C_B, where C_B is the "
                       "compute at which B's envelope law reaches the loss A's law reaches at C "
                       "(> 1: B needs less compute). Budgets in PFLOP/s-days, "
                       f"{_CONV_NAME[convention]} FLOPs; interval: 95% bootstrap over runs."))
    rows = []
    for a, b in pairs:
        if a not in laws or b not in laws:
            missing = a if a not in laws else b
            rows.append((f"{b} vs {a}", "–", "–", "–", f"no envelope law for {missing} (see Notes)"))
            continue
        min_runs = min(len(sweep.by_arm(a)), len(sweep.by_arm(b)))
        echo(f"multiplier of {b} over {a} at {len(budgets)} budget(s)")
        m = fits.efficiency_multiplier(laws[a], laws[b], budgets=budgets)
        common_L = (max(laws[a].L_range[0], laws[b].L_range[0]), min(laws[a].L_range[1], laws[b].L_range[1]))
        for C, (r, lo, hi) in m.at.items():
            L = float(laws[a](C))
            verdict = multiplier_verdict(r, lo, hi, b, min_runs)
            if not (common_L[0] <= L <= common_L[1]):
                verdict += "; extrapolated (loss outside both arms' fitted range)"
            interval = "–" if lo is None else f"[{lo:.3f}, {hi:.3f}]"
            rows.append((f"{b} vs {a}", _g(C), f"{r:.3f}x", interval, verdict))
    blocks.append(Table(("B vs A", "budget C (A)", "multiplier", "95% interval", "reading"), tuple(rows)))

    a, b = pairs[0]
    if len(laws) < 2 or a not in laws or b not in laws:
        blocks.append(Para("No Kimi-style chart: fewer than two arms have a fitted law."))
        return
    C_range = compute_range(sweep, convention)
    source, what = kimi_source(sweep, laws, convention)
    echo(f"Kimi-style chart ({b} vs {a})")
    kimi = plots.plot_kimi_style(source, fig_dir / "kimi_style", baseline=a, improved=b,
                                 convention=convention, budgets=budgets, C_range=C_range,
                                 bootstrap=bootstrap)
    figures.append(kimi.paths[0])
    blocks.append(Image(kimi.paths[0], f"Kimi-Linear-style chart, {plots.display_name(b)} vs "
                                       f"{plots.display_name(a)}: {what}; the arrow and box give "
                                       "the equal-loss compute ratio."))
    if source is sweep and kimi.multiplier is not None:
        rows = []
        for C, (r, lo, hi) in kimi.multiplier.at.items():
            rows.append((f"{b} vs {a}", _g(C), f"{r:.3f}x", "–" if lo is None else f"[{lo:.3f}, {hi:.3f}]",
                         multiplier_verdict(r, lo, hi, b, min(len(sweep.by_arm(a)), len(sweep.by_arm(b))))))
        blocks += [Para("The same multiplier from the laws through final points (one point per run, "
                        "as in the chart):"),
                   Table(("B vs A", "budget C (A)", "multiplier", "95% interval", "reading"), tuple(rows))]


def _position_section(blocks, figures, sweep, fig_dir, convention, bootstrap, echo):
    blocks.append(Heading(2, "Position-wise laws"))
    pos = position.load_position_evals(sweep, convention)
    if not pos.bucket_data:
        blocks.append(Para("No position-wise evaluations found (`RUN/eval/step_*.json`, written by "
                           "`experiments.evaluate`); evaluate the runs' final checkpoints to get "
                           "one law per position bucket (MoBA Table 3)."))
        return
    data, dropped = position.fittable(pos.bucket_data)
    blocks.append(Para(f"Latest evaluation of {len(pos.steps)} run(s); one point per run at its "
                       f"compute ({_CONV_NAME[convention]} FLOPs); `L = a C^b` per bucket and arm."))
    if dropped:
        blocks += [Para("Not fitted:"), Bullets(tuple(dropped))]
    if not data:
        blocks.append(Para("No bucket has enough evaluated runs for a fit, so no figure."))
        return
    echo(f"position-wise laws for {len(data)} bucket(s)")
    res = plots.plot_position_wise(data, fig_dir / "position_wise", convention=convention, bootstrap=bootstrap)
    figures.append(res.paths[0])
    blocks.append(Image(res.paths[0], "Loss per position bucket vs compute, one panel per bucket; "
                                      "dashed: fitted power laws."))
    rows = []
    for label, per_arm in res.fits.items():
        for arm, law in per_arm.items():
            rows.append((label, arm, _with_ci(law.a, law.a_ci), _with_ci(law.b, law.b_ci, 3),
                         str(len(law.residuals)), _g(law.rmse)))
    blocks.append(Table(("bucket", "arm", "a [95% CI]", "b [95% CI]", "runs", "residual RMS (log)"),
                        tuple(rows)))


def _chinchilla_section(blocks, sweep, bootstrap, echo):
    blocks.append(Heading(2, "Parametric law (Chinchilla approach 3)"))
    blocks.append(Para("L(N, D) = E + A / N^alpha + B / D^beta on each run's final loss, N = "
                       "non-embedding parameters, D = training tokens; Huber loss on log-loss, "
                       "L-BFGS from the full grid of starts (scaling.md)."))
    rows, reasons = [], []
    for arm in sweep.arms:
        why = chinchilla_skip_reason(sweep, arm)
        if why is not None:
            reasons.append(f"{arm}: skipped, {why}")
            continue
        N, D, L = chinchilla_inputs(sweep, arm)
        echo(f"Chinchilla fit for {arm} ({len(L)} runs, grid of {len(fits.CHINCHILLA_GRID):,} starts, "
             f"{bootstrap} bootstrap resamples)")
        try:
            f = fits.fit_chinchilla(N, D, L, bootstrap=bootstrap)
        except AnalysisError as e:
            reasons.append(f"{arm}: fit failed, {e}")
            continue
        cis = f.cis or {}
        rms = float(np.sqrt(np.mean(f.residuals ** 2)))
        rows.append((arm, *[_with_ci(getattr(f, k), cis.get(k), 4 if k in "EAB" else 3)
                            for k in ("E", "A", "B", "alpha", "beta")], str(len(L)), _g(rms)))
        if abs(np.corrcoef(np.log(N), np.log(D))[0, 1]) > 0.99:
            reasons.append(f"{arm}: N and D rise together across its runs (log correlation > 0.99), so "
                           "alpha and beta are barely separable; vary tokens at fixed size to pin them")
    if rows:
        blocks.append(Table(("arm", "E", "A", "B", "alpha", "beta", "runs", "residual RMS (log)"),
                            tuple(rows)))
    if reasons:
        blocks.append(Bullets(tuple(reasons)))


# ----------------------------------------------------------------------------- CLI


def _define_flags():
    from absl import flags
    flags.DEFINE_string("workdir", None, "Sweep directory (holds results.jsonl).")
    flags.DEFINE_enum("convention", "exact", list(CONVENTIONS), "FLOP convention of figures and fits.")
    flags.DEFINE_string("baseline", None, "Baseline arm of the multiplier (default: full, else mla, else the first).")
    flags.DEFINE_string("improved", None, "Compare only this arm with the baseline (default: every other arm).")
    flags.DEFINE_list("budgets", None, "Baseline computes in PFLOP/s-days for the multiplier, e.g. 1e-9,1e-8.")
    flags.DEFINE_integer("bootstrap", 200, "Bootstrap resamples for intervals (0: none).", lower_bound=0)
    flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/report).")
    flags.mark_flag_as_required("workdir")


def _parse_budgets(values) -> list[float] | None:
    if not values:
        return None
    try:
        return [float(v) for v in values]
    except ValueError:
        raise AnalysisError(f"--budgets={','.join(values)}: give comma-separated numbers "
                            "(PFLOP/s-days) such as 1e-9,1e-8") from None


def main(argv) -> None:
    from absl import flags
    F = flags.FLAGS
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        sys.exit(EXIT_ANALYSIS_ERROR)
    try:
        res = write_report(F.workdir, out=F.out, convention=F.convention, baseline=F.baseline,
                           improved=F.improved, budgets=_parse_budgets(F.budgets), bootstrap=F.bootstrap)
    except AnalysisError as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        sys.exit(EXIT_ANALYSIS_ERROR)
    print(res.markdown)
    print(res.html)


if __name__ == "__main__":
    from absl import app
    _define_flags()
    app.run(main)
