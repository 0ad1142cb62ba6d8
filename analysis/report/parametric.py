"""Parametric-law section: ``L(N, D) = E + A/N^alpha + B/D^beta`` per arm (Chinchilla approach 3)."""
from __future__ import annotations

import numpy as np

from analysis import fits
from analysis.report.blocks import Bullets, Heading, Para, Table, fmt, fmt_ci
from analysis.results import AnalysisError, Sweep

# The parametric law has 5 parameters; analysis.fits.fit_chinchilla needs 6 points.
MIN_CHINCHILLA_RUNS = 6
MIN_DISTINCT_N_D = 3


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


def add_parametric(blocks, sweep, bootstrap, echo):
    """Appends the Chinchilla approach-3 section: a fit per arm with enough runs, else why not."""
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
        rows.append((arm, *[fmt_ci(getattr(f, k), cis.get(k), 4 if k in "EAB" else 3)
                            for k in ("E", "A", "B", "alpha", "beta")], str(len(L)), fmt(rms)))
        if abs(np.corrcoef(np.log(N), np.log(D))[0, 1]) > 0.99:
            reasons.append(f"{arm}: N and D rise together across its runs (log correlation > 0.99), so "
                           "alpha and beta are barely separable; vary tokens at fixed size to pin them")
    if rows:
        blocks.append(Table(("arm", "E", "A", "B", "alpha", "beta", "runs", "residual RMS (log)"),
                            tuple(rows)))
    if reasons:
        blocks.append(Bullets(tuple(reasons)))
