"""Loss-vs-compute section: the figure, the envelope laws and the offset laws."""
from __future__ import annotations

import warnings

import numpy as np

from analysis import fits, plots
from analysis.report.blocks import Bullets, Heading, Image, Para, Table, fmt, fmt_ci
from analysis.results import AnalysisError
from analysis.units import CONVENTION_NAMES, CONVENTIONS, LOSS_UNIT


def _other_laws(sweep, convention, bootstrap, echo):
    """Each arm's envelope law on ``convention``'s axis, fitted as the figure fits its own
    (from the smallest run's final compute on; arms the figure cannot fit are left out)."""
    echo(f"fitting the same envelope laws on the {CONVENTION_NAMES[convention]} axis")
    laws = {}
    for i, arm in enumerate(sweep.arms):
        runs = sweep.by_arm(arm)
        if len(runs) < plots.MIN_ENVELOPE_RUNS:
            continue
        curves = sweep.curves(arm, convention)
        lo = min(r.final_compute(convention) for r in runs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")      # the figure's own fit already warned
            for C_min in (lo, None):
                try:
                    laws[arm] = fits.fit_envelope(curves, C_min, bootstrap=bootstrap, seed=i)[1]
                    break
                except AnalysisError:
                    continue
    return laws


def add_loss_vs_compute(blocks, figures, sweep, fig_dir, convention, bootstrap, echo):
    """Appends the loss-vs-compute section; returns each arm's envelope law and envelope,
    and ``{other convention: {arm: law}}``, the same laws on the other FLOP axis."""
    echo(f"fitting L = a C^b on each arm's lower envelope ({bootstrap} bootstrap resamples per arm)")
    res = plots.plot_loss_vs_compute(sweep, fig_dir / "loss_vs_compute", convention=convention,
                                     bootstrap=bootstrap)
    figures.append(res.paths[0])
    blocks += [Heading(2, "Loss vs compute"),
               Image(res.paths[0], "Validation loss along training for every run (light = small "
                                   "model); dashed: the power law fitted to each arm's lower "
                                   f"envelope (dots). Compute in PFLOP/s-days, {CONVENTION_NAMES[convention]} FLOPs."),
               Heading(3, "Fitted laws: L = a C^b on the lower envelope")]
    other = [c for c in CONVENTIONS if c != convention
             and all(c in r.flops for r in sweep.runs)]
    rows, other_laws = [], {}
    for conv in (convention, *other):
        laws = res.fits if conv == convention else _other_laws(sweep, conv, bootstrap, echo)
        if conv != convention:
            other_laws[conv] = laws
        for arm in sweep.arms:
            law = laws.get(arm)
            name = CONVENTION_NAMES[conv]
            if law is None:
                rows.append((arm, name, "no fit (see Notes)", "–", "–", "–", "–", "–"))
                continue
            rows.append((arm, name, law.label(), fmt_ci(law.a, law.a_ci), fmt_ci(law.b, law.b_ci, 3),
                         str(len(law.residuals)), fmt(law.rmse),
                         f"{fmt(law.C_range[0])} – {fmt(law.C_range[1])}"))
    blocks += [Table(("arm", "FLOPs", "law", "a [95% CI]", "b [95% CI]", "envelope points",
                      "residual RMS (log)", "fitted C range"), tuple(rows)),
               Para("The envelope is the best loss any run of the arm reached at each compute, "
                    "from the smallest run's final compute on (Chinchilla approach 1). Residual "
                    "RMS is in natural-log units (0.01 = 1% of the loss). Each arm's law is given "
                    f"on both FLOP conventions' axes (C in PFLOP/s-days); the figures, multipliers "
                    f"and the offset laws below use the {CONVENTION_NAMES[convention]} one "
                    "(`--convention`). Losses in " + LOSS_UNIT + ".")]

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
        rows.append((arm, fmt_ci(off.E, cis.get("E")), fmt_ci(off.A, cis.get("A")),
                     fmt_ci(off.alpha, cis.get("alpha"), 3), str(len(env.C)), fmt(rms)))
    blocks.append(Heading(3, "Offset law: L = E + A C^-alpha (same envelope points)"))
    if rows:
        blocks.append(Table(("arm", "E [95% CI]", "A [95% CI]", "alpha [95% CI]", "points",
                             "residual RMS (log)"), tuple(rows)))
        blocks.append(Para("Three parameters are weakly identified unless the envelope visibly "
                           "curves; wide intervals on E are expected on a short compute range."))
    if reasons:
        blocks.append(Bullets(tuple(reasons)))
    return res.fits, res.envelopes, other_laws
