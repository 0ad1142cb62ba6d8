"""Compute-efficiency multiplier section: arm pairs, budgets, the table and the Kimi-style chart."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from analysis import fits, plots
from analysis.report.blocks import Heading, Image, Para, Table, fmt
from analysis.results import AnalysisError, Sweep
from analysis.units import CONVENTION_NAMES


def default_baseline(arms: Sequence[str]) -> str:
    """The multiplier's baseline: ``full`` if present, else ``mla``, else the first arm."""
    for name in ("full", "mla"):
        if name in arms:
            return name
    return arms[0]


def default_budgets(sweep: Sweep, convention: str = "exact", n: int = 4) -> list[float]:
    """``n`` geometric points from the smallest to the largest run's final compute."""
    C = [r.final_compute(convention) for r in sweep.runs]
    lo, hi = min(C), max(C)
    return [lo] if hi <= lo else [float(x) for x in np.geomspace(lo, hi, n)]


def format_interval(lo: float | None, hi: float | None, min_runs: int | None = None) -> str:
    """A multiplier's "95% interval" as the report and the notebook print it: ``[lo, hi]``,
    or "–" when there is none (no bootstrap, too few fittable resamples) or when it means
    nothing (``min_runs``, the fewer runs of the two arms, below
    ``fits.MIN_BOOTSTRAP_RUNS``: the interval would reflect one arm's runs only)."""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "–"
    if min_runs is not None and min_runs < fits.MIN_BOOTSTRAP_RUNS:
        return "–"
    return f"[{lo:.3f}, {hi:.3f}]"


def multiplier_verdict(ratio: float, lo: float | None, hi: float | None, arm: str,
                       min_runs: int | None = None, labels: Mapping[str, str] | None = None) -> str:
    """Plain-words reading of one multiplier value and its interval.

    ``min_runs``: the fewer runs of the two arms. Below ``fits.MIN_BOOTSTRAP_RUNS`` the
    bootstrap over runs has too few distinct resamples for its interval to mean anything,
    so no difference is claimed whatever the interval says. ``labels``: display names
    (``Sweep.arm_display``; default: the arm's own name).
    """
    if min_runs is not None and min_runs < fits.MIN_BOOTSTRAP_RUNS:
        return (f"no difference claimed: an arm has {min_runs} run(s), too few for a "
                "meaningful bootstrap interval")
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return "no interval (no bootstrap): no difference claimed"
    if lo <= 1.0 <= hi:
        return "no difference resolved (interval includes 1.0)"
    better = "less" if lo > 1.0 else "more"
    return f"{plots.display_name(arm, labels)} needs {better} compute for the same loss"


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


def choose_pairs(arms, baseline, improved) -> list[tuple[str, str]]:
    """(baseline, improved) arm pairs of the multiplier; explicit arms must be in the sweep."""
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


def add_multiplier(blocks, figures, sweep, fig_dir, convention, bootstrap, pairs, laws, budgets, echo):
    """Appends the multiplier table per arm pair and the Kimi-style chart of the first pair."""
    blocks.append(Heading(2, "Compute-efficiency multiplier"))
    if not pairs:
        blocks.append(Para(f"The sweep has one arm ({sweep.arms[0]}): no multiplier and no "
                           "Kimi-style comparison."))
        return
    blocks.append(Para("Multiplier of arm B over baseline A at A's compute C: C / C_B, where C_B is the "
                       "compute at which B's envelope law reaches the loss A's law reaches at C "
                       "(> 1: B needs less compute). Budgets in PFLOP/s-days, "
                       f"{CONVENTION_NAMES[convention]} FLOPs; interval: 95% bootstrap over runs."))
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
            verdict = multiplier_verdict(r, lo, hi, b, min_runs, sweep.arm_display)
            if not (common_L[0] <= L <= common_L[1]):
                verdict += "; extrapolated (loss outside both arms' fitted range)"
            rows.append((f"{b} vs {a}", fmt(C), f"{r:.3f}x", format_interval(lo, hi, min_runs),
                         verdict))
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
                                 bootstrap=bootstrap, labels=sweep.arm_display, colours=sweep.arm_colour)
    figures.append(kimi.paths[0])
    name = lambda arm: plots.display_name(arm, sweep.arm_display)  # noqa: E731
    blocks.append(Image(kimi.paths[0], f"Kimi-Linear-style chart, {name(b)} vs "
                                       f"{name(a)}: {what}; the arrow and box give "
                                       "the equal-loss compute ratio."))
    if source is sweep and kimi.multiplier is not None:
        rows = []
        min_runs = min(len(sweep.by_arm(a)), len(sweep.by_arm(b)))
        for C, (r, lo, hi) in kimi.multiplier.at.items():
            rows.append((f"{b} vs {a}", fmt(C), f"{r:.3f}x", format_interval(lo, hi, min_runs),
                         multiplier_verdict(r, lo, hi, b, min_runs, sweep.arm_display)))
        blocks += [Para("The same multiplier from the laws through final points (one point per run, "
                        "as in the chart):"),
                   Table(("B vs A", "budget C (A)", "multiplier", "95% interval", "reading"), tuple(rows))]
