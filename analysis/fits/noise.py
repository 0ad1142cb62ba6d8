"""How validation noise moves the lower envelope and its law.

Each evaluation's loss is a mean over held-out sequences, so it carries a standard error
``s`` (``val_loss_se`` in ``metrics.jsonl``). The envelope (:func:`lower_envelope`) is a
running minimum over points, and a minimum over noisy points sits low: of ``k`` points
whose true loss is the same, the smallest is on average ``s * E[max of k standard
normals]`` below it (:func:`expected_min_shift`: 0.56 s for 2, 1.03 s for 4, 1.54 s for
10; never more than ``s * sqrt(2 ln k)``). Points of different true losses compete less,
so for a real sweep :func:`envelope_noise_shift` measures it: fresh Gaussian noise of each
point's own standard error is added to every curve, the envelope and its ``L = a C^b``
are refitted, and the law's mean change at the named computes is the shift that noise of
that size gives (a parametric bootstrap: the observed curves stand in for the truth).
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from scipy import integrate, stats

from analysis.fits.power_law import fit_power_law, lower_envelope
from analysis.results import AnalysisError


def expected_min_shift(k: int) -> float:
    """``E[max of k independent standard normals]``: how many standard errors the minimum
    of ``k`` noisy measurements of one true loss lies below it, on average (0 for k <= 1)."""
    if k <= 1:
        return 0.0
    f = lambda x: x * k * stats.norm.pdf(x) * stats.norm.cdf(x) ** (k - 1)  # noqa: E731
    return float(integrate.quad(f, -12.0, 12.0, limit=200)[0])


def min_shift_bound(k: int) -> float:
    """``sqrt(2 ln k)``: an upper bound of :func:`expected_min_shift` (0 for k <= 1)."""
    return math.sqrt(2.0 * math.log(k)) if k > 1 else 0.0


def envelope_noise_shift(curves: Mapping[str, tuple], se: Mapping[str, np.ndarray], C,
                         C_min: float | None = None, sims: int = 200, seed: int = 0) -> np.ndarray:
    """Mean change of the envelope law's loss at computes ``C`` when noise is added.

    Args:
        curves: ``{run: (C, L)}`` of one arm (``Sweep.curves``), C sorted ascending.
        se: ``{run: standard error per point}`` in the same order; a NaN point takes the
            median of its run's standard errors.
        C: computes at which to read the law (same unit as the curves).
        C_min: envelope points from this compute on enter each fit (as the figure fits).
        sims: noisy replicas; seed: their random numbers.

    Returns:
        ``mean(law_noisy(C) - law(C))`` over the replicas whose envelope has 3+ points at
        2+ computes (negative: noise pulls the law down).

    Raises:
        AnalysisError: a run without standard errors, or no replica could be fitted.
    """
    C = np.asarray(C, dtype=float)
    runs = list(curves)
    sd = {}
    for r in runs:
        s = np.asarray(se.get(r, []), dtype=float)
        if s.shape != np.shape(curves[r][1]) or not np.isfinite(s).any():
            raise AnalysisError(f"run {r!r} has no standard errors; every run needs val_loss_se")
        sd[r] = np.where(np.isfinite(s), s, np.nanmedian(s))
    base = lower_envelope(curves).restrict(C_min)
    if len(base.C) < 3:
        raise AnalysisError(f"the envelope has {len(base.C)} point(s) from C={C_min}; no law to perturb")
    law = fit_power_law(base.C, base.L)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(sims):
        noisy = {r: (curves[r][0], np.maximum(curves[r][1] + sd[r] * rng.standard_normal(len(sd[r])),
                                              1e-9)) for r in runs}
        env = lower_envelope(noisy).restrict(C_min)
        if len(env.C) >= 3 and len(np.unique(env.C)) >= 2:
            out.append(fit_power_law(env.C, env.L)(C) - law(C))
    if not out:
        raise AnalysisError("no noisy replica of the envelope could be fitted")
    return np.mean(out, axis=0)
