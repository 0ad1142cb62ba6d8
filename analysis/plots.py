"""The scaling figures: MoBA-style loss-vs-compute, Kimi-style points and laws, position-wise.

Each function draws one figure, saves it as PNG and PDF next to each other (``path``
with or without a suffix), and returns a :class:`FigureResult` with the fitted laws so a
sweep script can print them::

    from analysis import plots, results
    sweep = results.load_sweep("runs/scaling_v1")
    res = plots.plot_loss_vs_compute(sweep, "runs/scaling_v1/loss_vs_compute", convention="6nd")
    print(res.summary())

Figures are drawn with matplotlib's object API on an Agg canvas, so importing this
module never changes the pyplot backend of a notebook. Compute is in PFLOP/s-days; the
x label says which FLOP convention (scaling.md) is on the axis.

Arms are named and coloured as the sweep's ``results.jsonl`` declares
(``Sweep.arm_display``, ``Sweep.arm_colour``); functions that take plain ``{arm: ...}``
mappings accept ``labels={arm: name}`` and ``colours={arm: colormap name}`` instead.
Undeclared arms keep their own name and get an automatic colour family
(:mod:`analysis.arm_style`).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import matplotlib
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from analysis import arm_style, units
from analysis import fits as fitting
from analysis.results import AnalysisError, AnalysisWarning, Sweep


def display_name(arm: str, labels: Mapping[str, str] | None = None) -> str:
    """``labels[arm]`` (e.g. ``"MoBA"``, from ``Sweep.arm_display``) when given, else ``arm``."""
    return arm_style.display_name(arm, labels)


def _arm_cmaps(arms: Sequence[str], colours: Mapping[str, str] | None = None) -> dict:
    """Colormap per arm: its declared family unless an earlier arm of the figure took it,
    else an automatic one (:func:`analysis.arm_style.colour_families`)."""
    known = {}
    for arm, name in (colours or {}).items():
        if arm not in arms:
            continue
        if name in matplotlib.colormaps:
            known[arm] = name
        else:
            warnings.warn(f"{arm}: arm_colour {name!r} is not a matplotlib colormap; using an "
                          "automatic colour", AnalysisWarning, stacklevel=3)
    return {arm: matplotlib.colormaps[name]
            for arm, name in arm_style.colour_families(arms, known).items()}


def _styles(sweep: Sweep | None, labels, colours) -> tuple[dict, dict]:
    """Labels and colours declared by ``sweep`` (if any), overridden by the explicit ones."""
    base_l, base_c = (sweep.arm_display, sweep.arm_colour) if sweep is not None else ({}, {})
    return {**base_l, **(labels or {})}, {**base_c, **(colours or {})}


def _law_tex(fit, digits_a: int = 4, digits_b: int = 3, times: bool = False) -> str:
    """``2.625 C^-0.063`` (or ``2.3092 x C^-0.0536``) as mathtext."""
    sep = "\\times " if times else "\\,"
    return f"${fit.a:.{digits_a}g}{sep}C^{{{fit.b:.{digits_b}g}}}$"


def _log_axes(ax) -> None:
    """Log-log axes with plain-number labels; call after plotting (it reads the limits).

    The loss axis (rarely a full decade) gets evenly stepped ticks; the compute axis gets
    1-2-5 ticks when it spans under two decades, decades otherwise.
    """
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_locator(ticker.MaxNLocator(nbins=8, steps=[1, 2, 2.5, 5, 10]))
    ax.yaxis.set_minor_locator(ticker.NullLocator())
    ax.yaxis.set_major_formatter(plain)
    lo, hi = ax.get_xlim()
    subs = (1.0, 2.0, 5.0) if math.log10(hi / lo) < 2 else (1.0,)
    ax.xaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(plain)
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.grid(True, which="major", alpha=0.3)
    ax.grid(True, which="minor", axis="x", alpha=0.1)


def _save(fig: Figure, path) -> tuple[Path, ...]:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix.lower() in (".png", ".pdf") else path
    stem.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    out = (stem.with_name(stem.name + ".png"), stem.with_name(stem.name + ".pdf"))
    fig.savefig(out[0], dpi=150, bbox_inches="tight")
    fig.savefig(out[1], bbox_inches="tight")
    return out


@dataclasses.dataclass(frozen=True)
class FigureResult:
    """What a figure showed: saved files (PNG, PDF), laws, envelopes, multiplier.

    ``fits`` maps arm -> law (for :func:`plot_position_wise`: bucket -> arm -> law);
    ``labels`` the display names the figure used.
    """

    paths: tuple[Path, ...]
    fits: Mapping
    envelopes: Mapping[str, fitting.Envelope] | None = None
    multiplier: fitting.Multiplier | None = None
    multiplier_arms: tuple[str, str] | None = None
    labels: Mapping[str, str] | None = None
    not_fitted: Mapping[str, int] = dataclasses.field(default_factory=dict)
    incomplete: Mapping[str, tuple[int, int]] = dataclasses.field(default_factory=dict)

    def summary(self) -> str:
        """Plain-text lines: one per law (with intervals when bootstrapped) and multiplier."""
        lines = []
        name = lambda arm: display_name(arm, self.labels)  # noqa: E731

        def law_line(who, f):
            s = f"{who}: L = {f.label()}"
            if f.b_ci is not None:
                s += f"  (a {f.a_ci[0]:.4g}..{f.a_ci[1]:.4g}, b {f.b_ci[0]:.3g}..{f.b_ci[1]:.3g}, {f.ci:.0%})"
            return s

        for arm, n in self.not_fitted.items():
            lines.append(f"{name(arm)}: not fitted: {n} runs")
        for arm, (k, n) in self.incomplete.items():
            lines.append(f"{name(arm)}: incomplete: {k} of {n} planned runs finished")
        for key, val in self.fits.items():
            if isinstance(val, Mapping):
                lines += [law_line(f"[{key}] {name(arm)}", f) for arm, f in val.items()]
            else:
                lines.append(law_line(name(key), val))
        if self.multiplier is not None:
            a, b = self.multiplier_arms
            parts = []
            for C, (r, lo, hi) in self.multiplier.at.items():
                parts.append(f"{r:.3f}x at {C:.3g}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else ""))
            lines.append(f"{name(b)} over {name(a)} (equal-loss compute ratio, at {name(a)}'s "
                         f"PFLOP/s-days): " + "; ".join(parts))
        return "\n".join(lines)


# ------------------------------------------------------------------- loss vs compute

# The fewest runs whose lower envelope :func:`plot_loss_vs_compute` fits a law through:
# one run's curve is its own training dynamics, not a scaling trend.
MIN_ENVELOPE_RUNS = 2


def plot_loss_vs_compute(sweep: Sweep, path, convention: str = "exact", arms: Sequence[str] | None = None,
                         fit_range: tuple[float | None, float | None] | None = None, bootstrap: int = 0,
                         extend: float = 2.0, title: str | None = None, labels: Mapping[str, str] | None = None,
                         colours: Mapping[str, str] | None = None,
                         planned: Mapping[str, int] | None = None) -> FigureResult:
    """MoBA Figure-3-style chart: validation loss vs compute, log-log.

    Each run's validation curve is a solid line (one colour family per arm, lighter for
    smaller models). Per arm, the lower envelope of its runs (``fits.lower_envelope``,
    running-minimum frontier) is fitted by ``L = a C^b`` and drawn dashed, extended to
    ``extend`` times the largest compute, labelled "<Arm> Projection: a C^b"; the
    envelope points used are drawn as small dots.

    Args:
        convention: ``"exact"`` or ``"6nd"``; named on the x axis.
        arms: which arms, in legend order (default: all, in sweep order).
        fit_range: ``(C_min, C_max)`` of envelope points entering the fit, PFLOP/s-days.
            Default per arm: from the smallest run's final compute to the end. Below it
            the envelope is the smallest model's early training, which no power law
            describes.
        bootstrap: resamples over runs for the laws' intervals (0: none).
        labels, colours: display names and colormap names overriding the sweep's.
        planned: ``{arm: number of planned runs}``; an arm with fewer finished runs is
            marked "incomplete" in the legend and in ``FigureResult.incomplete``.

    An arm with fewer than 3 envelope points or ``MIN_ENVELOPE_RUNS`` runs (listed in
    ``FigureResult.not_fitted``) gets no law in ``FigureResult.fits`` and no projection
    (a warning says why); its runs are still drawn.
    """
    arms = list(arms) if arms is not None else sweep.arms
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    laws, envelopes, not_fitted, incomplete = {}, {}, {}, {}
    x_max = max(r.final_compute(convention) for arm in arms for r in sweep.by_arm(arm))
    handles = []
    labels, colours = _styles(sweep, labels, colours)
    cmaps = _arm_cmaps(arms, colours)
    for i, arm in enumerate(arms):
        runs = sweep.by_arm(arm)
        cmap = cmaps[arm]
        for j, run in enumerate(runs):
            shade = 0.35 + 0.55 * (j / max(len(runs) - 1, 1))
            C = run.compute(convention)
            ax.plot(C, run.val_loss, "-", color=cmap(shade), lw=1.2, alpha=0.9)
        lo, hi = fit_range if fit_range is not None else (min(r.final_compute(convention) for r in runs), None)
        curves = {r.run: (r.compute(convention), r.val_loss) for r in runs}
        dark = cmap(0.95)
        want = (planned or {}).get(arm, len(runs))
        if len(runs) < want:
            incomplete[arm] = (len(runs), want)
        note = f"; incomplete: {len(runs)} of {want}" if arm in incomplete else ""
        try:
            if len(runs) < MIN_ENVELOPE_RUNS:
                not_fitted[arm] = len(runs)
                raise AnalysisError(f"not fitted: {len(runs)} runs (a law needs at least "
                                    f"{MIN_ENVELOPE_RUNS})")
            try:
                env, law = fitting.fit_envelope(curves, lo, hi, bootstrap=bootstrap, seed=i)
            except AnalysisError:
                if fit_range is not None:
                    raise
                warnings.warn(f"{arm}: too few envelope points past the smallest run's end; fitting the whole "
                              "envelope", AnalysisWarning, stacklevel=2)
                env, law = fitting.fit_envelope(curves, bootstrap=bootstrap, seed=i)
        except AnalysisError as e:
            # Still draw the runs: a sweep's summary figure should not fail on one arm.
            warnings.warn(f"{arm}: no projection drawn ({e})", AnalysisWarning, stacklevel=2)
        else:
            laws[arm], envelopes[arm] = law, env
            ax.plot(env.C, env.L, ".", color=dark, ms=3, alpha=0.6)
            Cp = np.geomspace(env.C.min(), x_max * extend, 100)
            (h,) = ax.plot(Cp, law(Cp), "--", color=dark, lw=1.6,
                           label=f"{display_name(arm, labels)} Projection: {_law_tex(law)}")
            handles.append(h)
        (hr,) = ax.plot([], [], "-", color=cmap(0.65), lw=1.2,
                        label=f"{display_name(arm, labels)} runs ({len(runs)} sizes, light = small"
                              f"{note})")
        handles.append(hr)
    _log_axes(ax)
    ax.set_xlabel(units.axis_label(convention))
    ax.set_ylabel(units.LOSS_AXIS_LABEL)
    if title:
        ax.set_title(title)
    ax.legend(handles=handles, fontsize=8, loc="upper right")
    paths = _save(fig, path)
    return FigureResult(paths, laws, envelopes, labels=labels, not_fitted=not_fitted,
                        incomplete=incomplete)


# ------------------------------------------------------------------------ Kimi style


def _points_and_laws(source, convention: str, bootstrap: int):
    """-> ({arm: (C, L, runs) or None}, {arm: law})"""
    points, laws = {}, {}
    if isinstance(source, Sweep):
        for arm in source.arms:
            C, L, runs = source.final_points(arm, convention)
            points[arm] = (C, L, runs)
            # One seed per arm: the arms' runs are independent, so are their resamples.
            laws[arm] = fitting.fit_power_law(C, L, runs=runs, bootstrap=bootstrap, seed=len(laws))
        return points, laws
    if not isinstance(source, Mapping) or not source:
        raise AnalysisError("pass a Sweep, {arm: PowerLawFit} or {arm: (C, L)} to plot_kimi_style")
    for arm, val in source.items():
        if hasattr(val, "compute_at"):
            laws[arm], points[arm] = val, None
        else:
            C, L = val
            points[arm] = (np.asarray(C, float), np.asarray(L, float), None)
            laws[arm] = fitting.fit_power_law(C, L, bootstrap=bootstrap, seed=len(laws))
    return points, laws


def plot_kimi_style(source, path, baseline: str | None = None, improved: str | None = None,
                    convention: str | None = "exact", budgets: Sequence[float] | None = None,
                    C_range: tuple[float, float] | None = None, bootstrap: int = 200,
                    title: str | None = None, labels: Mapping[str, str] | None = None,
                    colours: Mapping[str, str] | None = None) -> FigureResult:
    """Kimi-Linear-style chart: final loss per run vs compute, a law per arm, the multiplier.

    Args:
        source: a :class:`Sweep` (each run's final loss at its final compute; laws fitted
            with a bootstrap over runs), ``{arm: (C, L)}`` points, or ``{arm: PowerLawFit}``
            laws only (e.g. ``PowerLawFit.from_params(2.3092, -0.0536)``).
        baseline, improved: arms of the multiplier ``C_baseline(L) / C_improved(L)``
            (default: the first and second arm). Drawn as a horizontal arrow at the middle
            budget and listed at every budget in a text box.
        convention: named on the x axis (``None`` for plain "PFLOP/s-days").
        budgets: baseline computes at which to report the multiplier (default: ends and
            geometric middle of the plotted range).
        C_range: plotted compute range (default: the data's, or 1-20 for laws only).
        labels, colours: ``{arm: display name}``, ``{arm: colormap name}`` (over a
            :class:`Sweep`'s own; default for mappings: the arm's name, automatic colours).
    """
    points, laws = _points_and_laws(source, convention or "exact", bootstrap)
    arms = list(laws)
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    data_C = [p[0] for p in points.values() if p is not None]
    if C_range is None:
        C_range = (min(c.min() for c in data_C), max(c.max() for c in data_C)) if data_C else (1.0, 20.0)
    Cp = np.geomspace(C_range[0] / 1.2, C_range[1] * 1.2, 200)
    markers = "osD^v<>"
    labels, colours = _styles(source if isinstance(source, Sweep) else None, labels, colours)
    cmaps = _arm_cmaps(arms, colours)
    for i, arm in enumerate(arms):
        colour = cmaps[arm](0.75)
        law = laws[arm]
        ax.plot(Cp, law(Cp), "-", color=colour, lw=1.8,
                label=f"{display_name(arm, labels)}: {_law_tex(law, 5, 3, times=True)}")
        if points[arm] is not None:
            C, L, _ = points[arm]
            ax.plot(C, L, markers[i % len(markers)], color=colour, ms=7, mec="white", mew=0.8, zorder=3)

    mult = None
    pair = None
    if len(arms) >= 2:
        a_arm = baseline or arms[0]
        b_arm = improved or next(a for a in arms if a != a_arm)
        for name in (a_arm, b_arm):
            if name not in laws:
                raise AnalysisError(f"arm {name!r} not in the figure's arms {arms}")
        pair = (a_arm, b_arm)
        if budgets is None:
            budgets = (C_range[0], math.sqrt(C_range[0] * C_range[1]), C_range[1])
        mult = fitting.efficiency_multiplier(laws[a_arm], laws[b_arm], np.geomspace(*C_range, 64), budgets=budgets)
        mid = sorted(budgets)[len(budgets) // 2]
        L_mid = float(laws[a_arm](mid))
        C_b = float(laws[b_arm].compute_at(L_mid))
        ax.annotate("", xy=(C_b, L_mid), xytext=(mid, L_mid),
                    arrowprops=dict(arrowstyle="->", color="black", lw=1.2))
        ax.plot([mid], [L_mid], "|", color="black", ms=10)
        ax.annotate(f"{mid / C_b:.2f}× at {mid:.3g}", xy=(math.sqrt(C_b * mid), L_mid), xytext=(0, 14),
                    textcoords="offset points", ha="center", va="bottom", fontsize=9, fontweight="bold",
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.85))
        lines = [f"{display_name(b_arm, labels)} vs {display_name(a_arm, labels)}: equal-loss compute ratio"]
        for C, (r, lo, hi) in mult.at.items():
            lines.append(f"  {r:.2f}× at {C:.3g} PFLOP/s-days" + (f"  [{lo:.2f}, {hi:.2f}]" if lo is not None else ""))
        ax.text(0.03, 0.03, "\n".join(lines), transform=ax.transAxes, fontsize=8, va="bottom", ha="left",
                bbox=dict(boxstyle="round", fc="white", ec="0.7", alpha=0.9))
    _log_axes(ax)
    ax.set_xlabel(units.axis_label(convention))
    ax.set_ylabel(units.LOSS_AXIS_LABEL)
    if title:
        ax.set_title(title)
    ax.legend(fontsize=9, loc="upper right")
    paths = _save(fig, path)
    return FigureResult(paths, laws, None, mult, pair, labels)


# ---------------------------------------------------------------------- position-wise


def _bucket_ylabel(label: str) -> str:
    return f"{'trailing loss' if 'trailing' in label.lower() else f'loss {label}'} ({units.LOSS_UNIT})"


def plot_position_wise(bucket_data: Mapping[str, Mapping[str, tuple]], path, convention: str | None = None,
                       ncols: int | None = None, bootstrap: int = 0, labels: Mapping[str, str] | None = None,
                       colours: Mapping[str, str] | None = None) -> FigureResult:
    """MoBA Table-3-style grid: one panel per position bucket, per-arm points and laws.

    Args:
        bucket_data: ``{bucket_label: {arm: (C, L)}}`` in panel order, C in PFLOP/s-days,
            e.g. ``{"0k-2k": {...}, "2k-4k": {...}, ..., "trailing": {...}}``. A label
            containing "trailing" gets the y label "trailing loss (nats per byte)",
            others "loss <label> (nats per byte)".
        convention: named on the x axes (``None``: plain "PFLOP/s-days").
        ncols: panels per row (default up to 4).
        labels, colours: ``{arm: display name}``, ``{arm: colormap name}`` (default: the
            arm's name, automatic colours).

    Returns:
        :class:`FigureResult` with ``fits[bucket][arm]``. An arm with fewer than 3
        distinct compute values in a bucket is drawn as points without a law (with
        an :class:`AnalysisWarning`) and has no entry there.
    """
    if not bucket_data:
        raise AnalysisError("bucket_data is empty; pass {bucket_label: {arm: (C, L)}}")
    panels = list(bucket_data)
    n = len(panels)
    ncols = ncols or min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.4 * ncols, 2.9 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    arm_order = list(dict.fromkeys(a for b in bucket_data.values() for a in b))
    labels, colours = _styles(None, labels, colours)
    cmaps = _arm_cmaps(arm_order, colours)
    all_fits = {}
    for k, label in enumerate(panels):
        ax = axes[k // ncols][k % ncols]
        all_fits[label] = {}
        for arm, (C, L) in bucket_data[label].items():
            i = arm_order.index(arm)
            colour = cmaps[arm](0.75)
            C, L = np.asarray(C, float), np.asarray(L, float)
            try:
                law = fitting.fit_power_law(C, L, bootstrap=bootstrap)
            except AnalysisError as e:
                if len(np.unique(C)) >= 3:      # enough points: a real failure
                    raise AnalysisError(f"bucket {label!r}, arm {arm!r}: {e}") from None
                # Too few runs for a law: draw the points, say so, fit nothing.
                warnings.warn(f"bucket {label!r}, arm {arm!r}: {e}; points drawn without a law",
                              AnalysisWarning, stacklevel=2)
                ax.plot(C, L, "os^D"[i % 4], color=colour, ms=4,
                        label=f"{display_name(arm, labels)} (too few runs to fit)")
                continue
            all_fits[label][arm] = law
            Cp = np.geomspace(C.min() / 1.15, C.max() * 1.15, 50)
            ax.plot(C, L, "os^D"[i % 4], color=colour, ms=4)
            ax.plot(Cp, law(Cp), "--", color=colour, lw=1.2, label=f"{display_name(arm, labels)}: {_law_tex(law, 4, 2)}")
        _log_axes(ax)
        ax.set_ylabel(_bucket_ylabel(label))
        ax.set_xlabel(units.axis_label(convention), fontsize=8)
        ax.legend(fontsize=7, loc="upper right")
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    fig.tight_layout()
    paths = _save(fig, path)
    return FigureResult(paths, all_fits, labels=labels)
