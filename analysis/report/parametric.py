"""Parametric-law section: ``L(N, D) = E + A/N^alpha + B/D^beta`` per arm (Chinchilla approach 3)."""
from __future__ import annotations

import numpy as np

from analysis import fits
from analysis.report.blocks import Bullets, Heading, Para, Table, fmt, fmt_ci
from analysis.results import AnalysisError, Sweep

# The parametric law has 5 parameters; analysis.fits.fit_chinchilla needs 6 points.
MIN_CHINCHILLA_RUNS = 6
MIN_DISTINCT_N_D = 3

# The report's default exclusion rule for the parametric fits: none (every finished run is
# fitted). Only finished runs reach the fit, the Huber loss (delta 1e-3 on log-loss)
# already bounds any one run's pull, and both rules of fit_chinchilla want more runs than a
# small sweep has: drop_highest removes a fixed count whatever the data (Besiroglu et al.'s
# 5 of 245 suits the extracted Chinchilla points, whose highest-loss points are the largest
# models at the smallest budget), and the residual rule's robust SD is unstable with 6-20
# runs for a 5-parameter law. Pass ``exclusion=dict(drop_highest=5)`` (a replication) or
# ``exclusion=dict(exclude_outliers=5.0)`` to :func:`add_parametric` for one of them.
DEFAULT_EXCLUSION: dict = {}


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


def add_parametric(blocks, sweep, bootstrap, echo, exclusion=None):
    """Appends the Chinchilla approach-3 section: a fit per arm with enough runs, else why not.

    ``exclusion``: keyword arguments of :func:`analysis.fits.fit_chinchilla` that pick the
    exclusion rule (``drop_highest`` or ``exclude_outliers``); ``None`` means
    :data:`DEFAULT_EXCLUSION` (no exclusion). The section says which rule was used.
    """
    exclusion = DEFAULT_EXCLUSION if exclusion is None else dict(exclusion)
    blocks.append(Heading(2, "Parametric law (Chinchilla approach 3)"))
    rule = ("none, every finished run is fitted (the report's default: the Huber loss already "
            "bounds any one run's pull, and the exclusion rules want more runs than a small sweep has)"
            if not any(v is not None and v != 0 for v in exclusion.values()) else
            ", ".join(f"{k}={v}" for k, v in exclusion.items()))
    blocks.append(Para("L(N, D) = E + A / N^alpha + B / D^beta on each run's final loss, N = "
                       "non-embedding parameters, D = training tokens; Huber loss on log-loss, "
                       f"L-BFGS from the full grid of starts (scaling.md). Exclusion rule: {rule}."))
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
            f = fits.fit_chinchilla(N, D, L, bootstrap=bootstrap, **exclusion)
        except AnalysisError as e:
            reasons.append(f"{arm}: fit failed, {e}")
            continue
        cis = f.cis or {}
        rms = float(np.sqrt(np.mean(f.residuals[~f.excluded] ** 2)))  # over the fitted runs
        rows.append((arm, *[fmt_ci(getattr(f, k), cis.get(k), 4 if k in "EAB" else 3)
                            for k in ("E", "A", "B", "alpha", "beta")], str(len(L)), f.exclusion, fmt(rms)))
        if abs(np.corrcoef(np.log(N), np.log(D))[0, 1]) > 0.99:
            reasons.append(f"{arm}: N and D rise together across its runs (log correlation > 0.99), so "
                           "alpha and beta are barely separable; vary tokens at fixed size to pin them")
    if rows:
        blocks.append(Table(("arm", "E", "A", "B", "alpha", "beta", "runs", "excluded",
                             "residual RMS (log, fitted runs)"),
                            tuple(rows)))
    if reasons:
        blocks.append(Bullets(tuple(reasons)))
