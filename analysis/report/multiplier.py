"""Compute-efficiency multiplier section: arm pairs, budgets, the table and the Kimi-style chart."""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from analysis import fits, plots
from analysis.report.blocks import Heading, Image, Para, Table, fmt
from analysis.report.noise import add_noise
from analysis.report.pairs import MOBA_STYLE, choose_comparisons, fallback_baseline
from analysis.results import AnalysisError, Sweep
from analysis.units import CONVENTION_NAMES


def default_baseline(arms: Sequence[str], labels: Mapping[str, str] | None = None) -> str:
    """The fallback baseline: ``full`` if present, else ``mla``, else the first arm (the
    papers' pairs, :mod:`analysis.report.pairs`, name each arm's own)."""
    return fallback_baseline(arms, labels)


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


def choose_pairs(arms, baseline, improved, labels=None) -> list[tuple[str, str]]:
    """(baseline, improved) arm pairs of the multiplier: the papers' pairs by default
    (:func:`analysis.report.pairs.choose_comparisons`); explicit arms must be in the sweep."""
    return [(c.baseline, c.improved) for c in choose_comparisons(arms, baseline, improved, labels)]


def _sub_sweep(sweep: Sweep, arms) -> Sweep:
    """``sweep`` restricted to ``arms`` (in that order)."""
    return dataclasses.replace(sweep, runs=tuple(r for a in arms for r in sweep.runs if r.arm == a))


def _multiplier_rows(sweep, a, b, m, laws=None):
    min_runs = min(len(sweep.by_arm(a)), len(sweep.by_arm(b)))
    rows = []
    for C, (r, lo, hi) in m.at.items():
        verdict = multiplier_verdict(r, lo, hi, b, min_runs, sweep.arm_display)
        if laws is not None:
            L = float(laws[a](C))
            common_L = (max(laws[a].L_range[0], laws[b].L_range[0]),
                        min(laws[a].L_range[1], laws[b].L_range[1]))
            if not (common_L[0] <= L <= common_L[1]):
                verdict += "; extrapolated (loss outside both arms' fitted range)"
        rows.append((f"{b} vs {a}", fmt(C), f"{r:.3f}x", format_interval(lo, hi, min_runs), verdict))
    return rows


def _moba_chart(blocks, figures, sweep, fig_dir, convention, comps, base):
    """MoBA Figure 3 for ``base`` and its MoBA-style arms: the section's loss-vs-compute
    figure when the sweep holds only those arms, else a figure of those arms alone."""
    name = lambda arm: plots.display_name(arm, sweep.arm_display)  # noqa: E731
    group = [base] + [c.improved for c in comps]
    title = f"{', '.join(name(a) for a in group[1:])} vs {name(base)}"
    blocks.append(Heading(3, f"{title} ({comps[0].source})"))
    if set(group) == set(sweep.arms):
        blocks.append(Para("Drawn as the MoBA paper draws it: the loss-vs-compute figure above "
                           "(each run's curve, each arm's dashed envelope projection)."))
        return
    stem = "loss_vs_compute_" + "_".join(group[1:]) + f"_vs_{base}"
    res = plots.plot_loss_vs_compute(_sub_sweep(sweep, group), fig_dir / stem, convention=convention)
    figures.append(res.paths[0])
    blocks.append(Image(res.paths[0], f"{title}, as the MoBA paper draws it: validation loss along "
                                      "training for every run (light = small model); dashed: the "
                                      "power law fitted to each arm's lower envelope."))


def _kimi_chart(blocks, figures, sweep, fig_dir, convention, bootstrap, comp, laws, budgets, echo):
    """The Kimi-Linear-style chart of one pair (only its two arms) and its final-point table."""
    a, b = comp.baseline, comp.improved
    name = lambda arm: plots.display_name(arm, sweep.arm_display)  # noqa: E731
    blocks.append(Heading(3, f"{name(b)} vs {name(a)} ({comp.source})"))
    if a not in laws or b not in laws:
        blocks.append(Para("No chart: an arm of the pair has no fitted law (see Notes)."))
        return
    pair = _sub_sweep(sweep, (a, b))
    source, what = kimi_source(pair, {k: laws[k] for k in (a, b)}, convention)
    echo(f"Kimi-style chart ({b} vs {a})")
    kimi = plots.plot_kimi_style(source, fig_dir / f"kimi_style_{b}_vs_{a}", baseline=a, improved=b,
                                 convention=convention, budgets=budgets,
                                 C_range=compute_range(pair, convention), bootstrap=bootstrap,
                                 labels=sweep.arm_display, colours=sweep.arm_colour)
    figures.append(kimi.paths[0])
    blocks.append(Image(kimi.paths[0], f"Kimi-Linear-style chart, {name(b)} vs {name(a)}: {what}; "
                                       "the arrow and box give the equal-loss compute ratio."))
    if source is pair and kimi.multiplier is not None:
        blocks += [Para("The same multiplier from the laws through final points (one point per run, "
                        "as in the chart):"),
                   Table(_HEADERS, tuple(_multiplier_rows(sweep, a, b, kimi.multiplier)))]


_HEADERS = ("B vs A", "budget C (A)", "multiplier", "95% interval", "reading")


def _pair_rows(sweep, comps, laws, budgets, echo, convention, strict=True):
    """The multiplier table's rows of every compared pair on one convention's laws; a pair
    without a multiplier (no common loss) raises when ``strict``, else gets a row saying so."""
    rows = []
    for c in comps:
        a, b = c.baseline, c.improved
        if a not in laws or b not in laws:
            missing = a if a not in laws else b
            rows.append((f"{b} vs {a}", "–", "–", "–", f"no envelope law for {missing} (see Notes)"))
            continue
        echo(f"multiplier of {b} over {a} at {len(budgets)} budget(s), {CONVENTION_NAMES[convention]} FLOPs")
        try:
            m = fits.efficiency_multiplier(laws[a], laws[b], budgets=budgets)
        except AnalysisError as e:
            if strict:
                raise
            rows.append((f"{b} vs {a}", "–", "–", "–", f"no multiplier: {e}"))
            continue
        rows += _multiplier_rows(sweep, a, b, m, laws)
    return rows


def _other_conventions(blocks, sweep, comps, other_laws, echo):
    """The multiplier table again on each other FLOP convention's laws and axis."""
    for conv, laws in other_laws.items():
        budgets = default_budgets(sweep, conv)
        blocks.append(Para(f"The same multipliers on the **{CONVENTION_NAMES[conv]}** axis (each arm's "
                           f"envelope law fitted on {CONVENTION_NAMES[conv]} FLOPs; budgets in "
                           "PFLOP/s-days of that count, 4 geometric points from the smallest to the "
                           "largest run's final compute; `--budgets` sets the table above):"))
        rows = _pair_rows(sweep, comps, laws, budgets, echo, conv, strict=False)
        blocks.append(Table(_HEADERS, tuple(rows)))


def add_multiplier(blocks, figures, sweep, fig_dir, convention, bootstrap, comps, laws, budgets, echo,
                   other_laws=None):
    """Appends the multiplier table of every compared pair (on ``convention``'s laws, then
    on each convention of ``other_laws``: ``{convention: {arm: law}}``), the validation-noise
    subsection, then each pair drawn the way its paper drew it (:mod:`analysis.report.pairs`)."""
    blocks.append(Heading(2, "Compute-efficiency multiplier"))
    if not comps:
        blocks.append(Para(f"The sweep has one arm ({sweep.arms[0]}): no multiplier and no "
                           "Kimi-style comparison."))
        add_noise(blocks, sweep, convention, comps, laws, budgets)
        return
    blocks.append(Para("Multiplier of arm B over baseline A at A's compute C: C / C_B, where C_B is the "
                       "compute at which B's envelope law reaches the loss A's law reaches at C "
                       "(> 1: B needs less compute). Budgets in PFLOP/s-days, "
                       f"{CONVENTION_NAMES[convention]} FLOPs; interval: 95% bootstrap over runs."))
    blocks.append(Para(PAIRS_RULE))
    blocks.append(Table(_HEADERS, tuple(_pair_rows(sweep, comps, laws, budgets, echo, convention))))
    _other_conventions(blocks, sweep, comps, other_laws or {}, echo)
    add_noise(blocks, sweep, convention, comps, laws, budgets)

    moba_groups: dict[str, list] = {}
    for c in comps:
        if c.style == MOBA_STYLE:
            moba_groups.setdefault(c.baseline, []).append(c)
    for base, group in moba_groups.items():
        _moba_chart(blocks, figures, sweep, fig_dir, convention, group, base)
    for c in comps:
        if c.style != MOBA_STYLE:
            _kimi_chart(blocks, figures, sweep, fig_dir, convention, bootstrap, c, laws, budgets, echo)


PAIRS_RULE = ("Pairs compared by default, the papers' own: every MoBA arm against full attention "
              "(drawn as MoBA's Figure 3: loss vs compute, each run's curve and dashed projections), "
              "Kimi Linear against MLA (drawn as Kimi Linear's chart: final loss per run, fitted "
              "laws, the equal-loss compute arrow), MLA against full attention, and any other arm "
              "against full attention (else MLA); an arm whose paper baseline is missing is "
              "compared with that fallback. `--baseline` / `--improved` override the pairs.")
