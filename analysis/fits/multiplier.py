"""Compute-efficiency multiplier of arm B over arm A: ``C_A(L) / C_B(L)`` at equal loss.

With power laws of different exponents the ratio varies with compute, so it is a curve
over arm A's compute, read at named budgets, with a bootstrap interval when the laws
carry bootstrap samples (scaling.md).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Mapping, Sequence

import numpy as np

from analysis.fits.bootstrap import percentile_interval
from analysis.fits.inputs import as_positive
from analysis.results import AnalysisError, AnalysisWarning


@dataclasses.dataclass(frozen=True)
class Multiplier:
    """Compute-efficiency multiplier of arm B over arm A as a curve.

    Indexed by **arm A's compute**: at ``C[i]`` arm A's law reaches ``loss[i]``; arm B
    reaches that loss at ``C_B[i]``; ``ratio[i] = C[i] / C_B[i]`` (> 1: B needs less
    compute). ``lo``/``hi`` bound it when the fits carry bootstrap samples. ``at`` maps
    each named budget (arm A's compute) to ``(ratio, lo, hi)``. ``extrapolated`` marks
    loss levels outside the range both arms' fitted data cover.
    """

    C: np.ndarray
    loss: np.ndarray
    C_B: np.ndarray
    ratio: np.ndarray
    lo: np.ndarray | None
    hi: np.ndarray | None
    at: Mapping[float, tuple[float, float | None, float | None]]
    extrapolated: np.ndarray

    def __call__(self, C):
        """Multiplier at arm-A compute ``C`` (log-linear interpolation on the grid)."""
        return np.interp(np.log(C), np.log(self.C), self.ratio)


def _ratio(fit_A, fit_B, C):
    return C / fit_B.compute_at(fit_A(C))


def efficiency_multiplier(fit_A, fit_B, C_grid=None, budgets: Sequence[float] | None = None,
                          ci: float = 0.95) -> Multiplier:
    """Equal-loss compute ratio ``C_A(L) / C_B(L)`` of arm B over baseline arm A.

    The curve is indexed by the compute of arm A (the baseline): for each ``C`` in
    ``C_grid``, ``L = fit_A(C)`` and the ratio is ``C / fit_B.compute_at(L)``. With the
    Kimi Linear laws (A = MLA ``2.3092 C^-0.0536``, B = Kimi ``2.2879 C^-0.0527``) this
    gives 1.19 at C=1, 1.18 at 1.8, 1.16 at 5, 1.15 at 10 and 1.14 at 15 PFLOP/s-days,
    the figures of scaling.md and kda.md. (Indexed by B's compute instead the values
    shift by ~0.003: 1.177 at 1.8, 1.157 at 5, 1.136 at 15.)

    Args:
        fit_A, fit_B: :class:`PowerLawFit` or :class:`OffsetPowerLawFit` (anything with
            ``__call__(C)``, ``compute_at(L)`` and ``resampled()``).
        C_grid: arm-A computes (default: 64 log-spaced points over the union of the
            fits' compute ranges).
        budgets: named arm-A computes for ``Multiplier.at`` (default: the grid's ends and
            geometric middle).
        ci: interval level; intervals pair the i-th bootstrap samples of the two fits
            (independent resamples), or vary one fit if only it has samples.

    Raises:
        AnalysisError: the fits' data share no loss level, or arm B never reaches arm A's
            losses (e.g. below an offset law's E) anywhere on the grid.
    """
    ranges = [f.L_range for f in (fit_A, fit_B) if getattr(f, "L_range", None) is not None]
    if len(ranges) == 2:
        lo_L, hi_L = max(r[0] for r in ranges), min(r[1] for r in ranges)
        if lo_L >= hi_L:
            raise AnalysisError(
                f"the arms share no loss level (A's fitted losses span {ranges[0][0]:.4g}-{ranges[0][1]:.4g}, "
                f"B's {ranges[1][0]:.4g}-{ranges[1][1]:.4g}); the multiplier would be pure extrapolation: "
                "extend the sweep so both arms reach common losses"
            )
    else:
        lo_L, hi_L = -np.inf, np.inf
    if C_grid is None:
        cr = [f.C_range for f in (fit_A, fit_B) if getattr(f, "C_range", None) is not None]
        if not cr:
            raise AnalysisError("fits entered by hand carry no compute range; pass C_grid")
        C_grid = np.geomspace(min(r[0] for r in cr), max(r[1] for r in cr), 64)
    C = as_positive("C_grid", C_grid)
    C = np.sort(C)
    if budgets is None:
        budgets = (float(C[0]), float(np.sqrt(C[0] * C[-1])), float(C[-1]))
    budgets = [float(b) for b in as_positive("budgets", budgets)]

    loss = fit_A(C)
    C_B = fit_B.compute_at(loss)
    ok = np.isfinite(C_B) & (C_B > 0)
    if not ok.any():
        raise AnalysisError("arm B's law never reaches arm A's losses on this grid (below its irreducible loss?); choose another C_grid or fit form")
    if not ok.all():
        warnings.warn(f"dropping {np.sum(~ok)} grid point(s) where arm B's law cannot reach arm A's loss", AnalysisWarning, stacklevel=2)
        C, loss, C_B = C[ok], loss[ok], C_B[ok]
    ratio = C / C_B
    extrap = (loss < lo_L) | (loss > hi_L)

    lo = hi = None
    sA, sB = fit_A.resampled(), fit_B.resampled()
    if sA or sB:
        n = min(len(sA), len(sB)) if (sA and sB) else max(len(sA), len(sB))
        pairs = [((sA[i] if sA else fit_A), (sB[i] if sB else fit_B)) for i in range(n)]
        with np.errstate(invalid="ignore", divide="ignore"):
            boot = np.array([_ratio(a, b, C) for a, b in pairs])
        boot[~np.isfinite(boot)] = np.nan
        lo, hi = percentile_interval(boot, ci)
    at = {}
    for b in budgets:
        r = float(_ratio(fit_A, fit_B, np.array([b]))[0])
        if not np.isfinite(r):
            raise AnalysisError(f"no finite multiplier at budget {b:g}: arm B's law does not reach arm A's loss there")
        if lo is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                bb = np.array([_ratio(x, y, np.array([b]))[0] for x, y in pairs])
            bl, bh = percentile_interval(bb[np.isfinite(bb)].reshape(-1, 1), ci)
            at[b] = (r, float(bl[0]), float(bh[0]))
        else:
            at[b] = (r, None, None)
    return Multiplier(C, loss, C_B, ratio, lo, hi, at, extrap)
