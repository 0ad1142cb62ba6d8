"""Loss-vs-compute laws (Chinchilla approach 1): lower envelope, ``L = a C^b``, ``L = E + A C^-alpha``.

Compute ``C`` is in PFLOP/s-days by convention (any positive unit works). ``L = a C^b`` is
a least-squares fit in log-log space, on the lower envelope of the runs' validation
curves for :func:`fit_envelope`; ``b`` is negative for a loss that falls with compute.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Mapping

import numpy as np
from scipy import optimize

from analysis.fits.bootstrap import percentile_interval, resample_indices
from analysis.fits.inputs import as_positive, same_length
from analysis.results import AnalysisError, AnalysisWarning

# Fewest runs for a bootstrap over runs to give an interval: 2 runs have only 3 distinct
# resamples ({a, a}, {b, b}, {a, b}), so their percentile intervals come out zero-width.
MIN_BOOTSTRAP_RUNS = 3


# --------------------------------------------------------------------------- envelope


@dataclasses.dataclass(frozen=True)
class Envelope:
    """Lower envelope of loss curves: ``L[i]`` is the best loss reached at compute ``C[i]``,
    attained by run ``run[i]``."""

    C: np.ndarray
    L: np.ndarray
    run: np.ndarray

    def restrict(self, C_min: float | None = None, C_max: float | None = None) -> "Envelope":
        """The envelope points with ``C_min <= C <= C_max``."""
        keep = np.ones(len(self.C), bool)
        if C_min is not None:
            keep &= self.C >= C_min
        if C_max is not None:
            keep &= self.C <= C_max
        return Envelope(self.C[keep], self.L[keep], self.run[keep])


def _normalise_curves(curves) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if isinstance(curves, Mapping):
        items = list(curves.items())
    else:
        items = [(str(i), c) for i, c in enumerate(curves)]
    if not items:
        raise AnalysisError("no curves given; pass {run: (C, L)} with at least one run")
    out = {}
    for run, c in items:
        try:
            C, L = c
        except (TypeError, ValueError):
            raise AnalysisError(f"curve {run!r} is not a (C, L) pair of arrays") from None
        C = as_positive(f"compute of run {run!r}", C)
        L = as_positive(f"loss of run {run!r}", L)
        same_length(C=C, L=L)
        order = np.argsort(C, kind="stable")
        out[str(run)] = (C[order], L[order])
    return out


def lower_envelope(curves, method: str = "points", n_grid: int = 64) -> Envelope:
    """Best loss any run reached at each compute (Chinchilla approach 1).

    Args:
        curves: ``{run: (C, L)}`` (e.g. ``Sweep.curves(arm)``) or a list of ``(C, L)``
            pairs; C in any positive unit (PFLOP/s-days by convention).
        method: ``"points"`` (default) keeps, of the union of all evaluation points, those
            whose loss is strictly below every point at lower or equal compute: the
            running-minimum frontier, i.e. the best loss obtainable with at most that
            compute. Only measured points enter, none interpolated.
            ``"grid"``: on ``n_grid`` log-spaced computes over the union's range, the
            minimum over the runs whose evaluated range covers that compute of the run's
            loss interpolated linearly in log-log. No running minimum is taken, so where
            a small run has ended and the next is still above its final loss the
            envelope rises; use it to read the envelope at fixed computes.

    Returns:
        :class:`Envelope` sorted by compute.
    """
    data = _normalise_curves(curves)
    if method == "points":
        C = np.concatenate([c for c, _ in data.values()])
        L = np.concatenate([l for _, l in data.values()])
        run = np.concatenate([[r] * len(c) for r, (c, _) in data.items()])
        order = np.lexsort((L, C))  # by compute, best loss first among ties
        C, L, run = C[order], L[order], run[order]
        prev_best = np.concatenate([[np.inf], np.minimum.accumulate(L)[:-1]])
        keep = L < prev_best
        return Envelope(C[keep], L[keep], run[keep])
    if method == "grid":
        lo = min(c[0] for c, _ in data.values())
        hi = max(c[-1] for c, _ in data.values())
        grid = np.geomspace(lo, hi, n_grid)
        best = np.full(n_grid, np.inf)
        who = np.empty(n_grid, dtype=object)
        for r, (c, l) in data.items():
            inside = (grid >= c[0]) & (grid <= c[-1])
            if not inside.any():
                continue
            vals = np.exp(np.interp(np.log(grid[inside]), np.log(c), np.log(l)))
            idx = np.flatnonzero(inside)
            better = vals < best[idx]
            best[idx[better]] = vals[better]
            who[idx[better]] = r
        ok = np.isfinite(best)
        return Envelope(grid[ok], best[ok], who[ok].astype(str))
    raise AnalysisError(f"unknown envelope method {method!r}; use 'points' or 'grid'")


# -------------------------------------------------------------------------- power law


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """``L = a * C^b`` (``b < 0`` for a loss that falls with compute).

    ``residuals`` are ``log L - log fit`` (natural log) per fitted point; ``samples`` the
    bootstrap ``(a, b)`` pairs, shape ``(n, 2)``; ``*_ci`` the percentile intervals at
    level ``ci``. ``C_range`` / ``L_range`` are the spans of the fitted data (``None``
    for laws entered by hand with :meth:`from_params`).
    """

    a: float
    b: float
    a_ci: tuple[float, float] | None = None
    b_ci: tuple[float, float] | None = None
    residuals: np.ndarray | None = None
    samples: np.ndarray | None = None
    ci: float = 0.95
    C_range: tuple[float, float] | None = None
    L_range: tuple[float, float] | None = None

    @classmethod
    def from_params(cls, a: float, b: float) -> "PowerLawFit":
        """A law from published numbers, e.g. ``PowerLawFit.from_params(2.3092, -0.0536)``."""
        if not (np.isfinite(a) and np.isfinite(b) and a > 0):
            raise AnalysisError(f"power law needs finite a > 0 and finite b, got a={a}, b={b}")
        return cls(float(a), float(b))

    def __call__(self, C):
        return self.a * np.asarray(C, dtype=float) ** self.b

    def compute_at(self, L):
        """Compute at which the law reaches loss ``L`` (the inverse)."""
        if self.b == 0:
            raise AnalysisError("the law is flat (b = 0); it reaches no loss level at a unique compute")
        return (np.asarray(L, dtype=float) / self.a) ** (1.0 / self.b)

    def resampled(self) -> list["PowerLawFit"]:
        """One law per bootstrap sample (empty without a bootstrap)."""
        return [] if self.samples is None else [PowerLawFit(a, b) for a, b in self.samples]

    def label(self, var: str = "C") -> str:
        """``'2.625 C^-0.063'``: 4 significant digits for a, 3 for b."""
        return f"{self.a:.4g} {var}^{self.b:.3g}"

    @property
    def rmse(self) -> float | None:
        """Root-mean-square log residual (a relative error)."""
        return None if self.residuals is None else float(np.sqrt(np.mean(self.residuals ** 2)))


def _loglog_lstsq(logC: np.ndarray, logL: np.ndarray) -> tuple[float, float]:
    X = np.stack([np.ones_like(logC), logC], axis=1)
    (loga, b), *_ = np.linalg.lstsq(X, logL, rcond=None)
    return float(np.exp(loga)), float(b)


def fit_power_law(C, L, runs=None, bootstrap: int = 0, seed: int = 0, ci: float = 0.95) -> PowerLawFit:
    """Least-squares fit of ``L = a C^b`` in log-log space.

    Args:
        C, L: compute (PFLOP/s-days by convention) and loss, one entry per point; at
            least 3 points at 2 or more distinct computes.
        runs: optional run id per point. With it the bootstrap resamples whole runs (the
            independent unit: points of one run share its noise); without it, points.
        bootstrap: number of bootstrap resamples (0: no intervals).
        seed, ci: resampling seed and interval level.
    """
    C = as_positive("compute C", C, min_points=3)
    L = as_positive("loss L", L, min_points=3)
    same_length(C=C, L=L)
    if len(np.unique(C)) < 2:
        raise AnalysisError("all points share one compute value; a power law needs at least 2 distinct computes")
    logC, logL = np.log(C), np.log(L)
    a, b = _loglog_lstsq(logC, logL)
    resid = logL - (np.log(a) + b * logC)
    samples = a_ci = b_ci = None
    if bootstrap:
        groups = None
        if runs is not None:
            groups = np.asarray(runs)
            same_length(C=C, runs=groups)
            if len(np.unique(groups)) < 3:
                warnings.warn(f"only {len(np.unique(groups))} run(s): bootstrapping points instead of runs", AnalysisWarning, stacklevel=2)
                groups = None
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(bootstrap):
            idx = resample_indices(rng, groups, len(C))
            if len(np.unique(logC[idx])) < 2:
                continue  # degenerate resample: one compute value
            out.append(_loglog_lstsq(logC[idx], logL[idx]))
        samples = np.array(out).reshape(-1, 2)
        if len(samples) < bootstrap // 2:
            raise AnalysisError(f"only {len(samples)} of {bootstrap} bootstrap resamples were fittable; add runs")
        lo, hi = percentile_interval(samples, ci)
        a_ci, b_ci = (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))
    return PowerLawFit(a, b, a_ci, b_ci, resid, samples, ci, (float(C.min()), float(C.max())), (float(L.min()), float(L.max())))


def fit_envelope(curves, C_min: float | None = None, C_max: float | None = None, bootstrap: int = 0,
                 seed: int = 0, ci: float = 0.95, method: str = "points") -> tuple[Envelope, PowerLawFit]:
    """Envelope of ``curves`` restricted to ``[C_min, C_max]`` and its ``L = a C^b`` fit.

    The bootstrap resamples runs (curves) with replacement, recomputes the envelope of the
    resample and refits it: the interval covers which runs happened to form the frontier.
    With fewer than ``MIN_BOOTSTRAP_RUNS`` curves (or too few fittable resamples) the law
    is returned without an interval, with a warning saying why.
    """
    data = _normalise_curves(curves)
    env = lower_envelope(data, method=method).restrict(C_min, C_max)
    if len(env.C) < 3:
        raise AnalysisError(f"the envelope has {len(env.C)} point(s) in C range [{C_min}, {C_max}]; widen the range or log more evaluations")
    fit = fit_power_law(env.C, env.L)
    if not bootstrap:
        return env, fit
    names = list(data)
    if len(names) < MIN_BOOTSTRAP_RUNS:
        warnings.warn(f"envelope bootstrap over only {len(names)} run(s) (fewer than "
                      f"{MIN_BOOTSTRAP_RUNS}): the law is reported without an interval; add runs",
                      AnalysisWarning, stacklevel=2)
        return env, fit
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(bootstrap):
        pick = rng.choice(len(names), size=len(names), replace=True)
        sub = lower_envelope({names[i]: data[names[i]] for i in pick}, method=method).restrict(C_min, C_max)
        if len(sub.C) >= 3 and len(np.unique(sub.C)) >= 2:
            out.append(_loglog_lstsq(np.log(sub.C), np.log(sub.L)))
    samples = np.array(out).reshape(-1, 2)
    if len(samples) < bootstrap // 2:
        # Keep the point fit (its range does not depend on the bootstrap); report no interval.
        warnings.warn(f"only {len(samples)} of {bootstrap} envelope bootstrap resamples were "
                      "fittable; the law is reported without an interval (add runs or widen the "
                      "C range)", AnalysisWarning, stacklevel=2)
        return env, fit
    lo, hi = percentile_interval(samples, ci)
    fit = dataclasses.replace(fit, samples=samples, ci=ci, a_ci=(float(lo[0]), float(hi[0])), b_ci=(float(lo[1]), float(hi[1])))
    return env, fit


# ------------------------------------------------------------------ offset power law


@dataclasses.dataclass(frozen=True)
class OffsetPowerLawFit:
    """``L = E + A * C^-alpha`` (irreducible loss ``E``). Fields as in :class:`PowerLawFit`;
    ``samples`` rows are ``(E, A, alpha)``."""

    E: float
    A: float
    alpha: float
    cis: Mapping[str, tuple[float, float]] | None = None
    residuals: np.ndarray | None = None
    samples: np.ndarray | None = None
    ci: float = 0.95
    C_range: tuple[float, float] | None = None
    L_range: tuple[float, float] | None = None

    def __call__(self, C):
        return self.E + self.A * np.asarray(C, dtype=float) ** (-self.alpha)

    def compute_at(self, L):
        """Inverse; NaN where ``L <= E`` (a loss the law never reaches)."""
        L = np.asarray(L, dtype=float)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = ((L - self.E) / self.A) ** (-1.0 / self.alpha)
        return np.where(L > self.E, out, np.nan)

    def resampled(self) -> list["OffsetPowerLawFit"]:
        return [] if self.samples is None else [OffsetPowerLawFit(*s) for s in self.samples]

    def label(self, var: str = "C") -> str:
        return f"{self.E:.4g} + {self.A:.4g} {var}^-{self.alpha:.3g}"


def _fit_offset_once(logC: np.ndarray, L: np.ndarray) -> tuple[float, float, float]:
    logL = np.log(L)
    # Profile over E: for fixed E, log(L - E) = log A - alpha log C is linear.
    best = (np.inf, 0.0, 0.0, 0.0)
    for E in np.linspace(0.0, 0.98, 50) * L.min():
        loga, slope = np.polyfit(logC, np.log(L - E), 1)[::-1]
        sse = np.sum((np.log(E + np.exp(loga + slope * logC)) - logL) ** 2)
        if sse < best[0]:
            best = (sse, E, loga, -slope)
    _, E0, loga0, alpha0 = best

    def resid(p):
        E, loga, alpha = p
        return np.log(E + np.exp(loga - alpha * logC)) - logL

    lower = [0.0, -np.inf, 0.0]
    upper = [L.min() * (1 - 1e-9), np.inf, np.inf]
    x0 = [min(E0, upper[0] * 0.999), loga0, max(alpha0, 1e-6)]
    sol = optimize.least_squares(resid, x0, bounds=(lower, upper), method="trf")
    E, loga, alpha = sol.x
    return float(E), float(np.exp(loga)), float(alpha)


def fit_power_law_offset(C, L, runs=None, bootstrap: int = 0, seed: int = 0, ci: float = 0.95) -> OffsetPowerLawFit:
    """Fit ``L = E + A C^-alpha`` by least squares on log-loss, with ``0 <= E < min L``.

    Initialisation profiles ``E`` over a grid (for fixed ``E`` the rest is a linear
    log-log fit), then refines all three with bounded least squares. Needs at least 4
    points; three parameters are weakly identified unless the data curve visibly.
    Bootstrap as in :func:`fit_power_law`.
    """
    C = as_positive("compute C", C, min_points=4)
    L = as_positive("loss L", L, min_points=4)
    same_length(C=C, L=L)
    if len(np.unique(C)) < 3:
        raise AnalysisError("an offset power law needs at least 3 distinct computes")
    logC = np.log(C)
    E, A, alpha = _fit_offset_once(logC, L)
    resid = np.log(L) - np.log(E + A * C ** -alpha)
    samples = cis = None
    if bootstrap:
        groups = None if runs is None else np.asarray(runs)
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(bootstrap):
            idx = resample_indices(rng, groups, len(C))
            if len(np.unique(logC[idx])) >= 3:
                out.append(_fit_offset_once(logC[idx], L[idx]))
        samples = np.array(out).reshape(-1, 3)
        if len(samples) < bootstrap // 2:
            raise AnalysisError(f"only {len(samples)} of {bootstrap} bootstrap resamples were fittable; add points")
        lo, hi = percentile_interval(samples, ci)
        cis = {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(("E", "A", "alpha"))}
    return OffsetPowerLawFit(E, A, alpha, cis, resid, samples, ci, (float(C.min()), float(C.max())), (float(L.min()), float(L.max())))
