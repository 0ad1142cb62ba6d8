"""Summary section: the sweep, its total compute, the runs table and the design check."""
from __future__ import annotations

import datetime

from analysis.report.blocks import Bullets, Heading, Para, Table, fmt
from analysis.results import Sweep
from analysis.units import CONVENTION_NAMES, CONVENTIONS


def total_compute(sweep: Sweep) -> dict[str, float]:
    """Training compute of all runs, in PFLOP/s-days, per FLOP convention present."""
    return {c: float(sum(r.final_compute(c) for r in sweep.runs)) for c in CONVENTIONS
            if all(c in r.flops for r in sweep.runs)}


def runs_table(sweep: Sweep) -> tuple[tuple[str, ...], list[tuple[str, ...]]]:
    """(headers, rows): one row per run with its size, tokens, compute, final loss and that
    loss's standard error over held-out sequences (a dash where the run logged none)."""
    convs = [c for c in CONVENTIONS if all(c in r.flops for r in sweep.runs)]
    headers = ("run", "arm", "size", "non-emb. params", "tokens",
               *[f"C {CONVENTION_NAMES[c]} (PFLOP/s-days)" for c in convs], "final val loss",
               "final val SE")
    rows = []
    for r in sweep.runs:
        rows.append((r.run, r.arm, r.size,
                     "–" if r.n_params_nonembed is None else f"{r.n_params_nonembed:,}",
                     "–" if r.total_tokens is None else f"{r.total_tokens:,}",
                     *[fmt(r.final_compute(c)) for c in convs], f"{r.final_loss:.4f}",
                     fmt(r.final_se, 2)))
    return headers, rows


def add_summary(blocks: list, sweep: Sweep, convention: str, bootstrap: int) -> None:
    """Appends the Summary and Runs sections to ``blocks``."""
    totals = total_compute(sweep)
    tot = "; ".join(f"{fmt(v, 4)} PFLOP/s-days ({CONVENTION_NAMES[c]})" for c, v in totals.items())
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    items = [f"Sweep directory: `{sweep.source}`",
             f"Finished runs used: **{len(sweep.runs)}** in {len(sweep.arms)} arm(s) "
             f"({', '.join(f'{a}: {len(sweep.by_arm(a))}' for a in sweep.arms)})",
             f"Total training compute: {tot}",
             f"Figures, fits and budgets use the **{CONVENTION_NAMES[convention]}** FLOP convention; "
             f"intervals are 95% bootstrap percentiles over runs ({bootstrap} resamples)"
             if bootstrap else f"Figures, fits and budgets use the **{CONVENTION_NAMES[convention]}** "
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
