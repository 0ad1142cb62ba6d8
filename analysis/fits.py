"""Scaling-law fits: loss-vs-compute envelopes, Chinchilla approaches 1-3, multipliers.

Conventions follow ``/work/shared/design/scaling.md`` exactly:

* compute ``C`` is in PFLOP/s-days (``pflops_days``) unless a name says FLOPs;
* loss-vs-compute laws ``L = a C^b`` are least squares in log-log on the lower
  envelope of the runs' validation curves (approach 1), ``b`` negative;
* the parametric law ``L = E + A/N^alpha + B/D^beta`` (approach 3) is fitted in the
  log-sum-exp form, Huber (delta 1e-3) on log-loss, terms summed, L-BFGS-B from the
  full grid of starts, best of the grid;
* the compute-efficiency multiplier of arm B over arm A is ``C_A(L) / C_B(L)`` at equal
  loss, reported as a curve over arm A's compute.

Every fit returns a small frozen dataclass with the parameters, optional bootstrap
intervals (and the bootstrap samples, so derived quantities get intervals too) and
residuals. Bad inputs raise :class:`AnalysisError`; a fit never returns NaN silently.

Example (the Kimi Linear laws, C in PFLOP/s-days)::

    mla = PowerLawFit.from_params(2.3092, -0.0536)
    kimi = PowerLawFit.from_params(2.2879, -0.0527)
    m = efficiency_multiplier(mla, kimi, budgets=(1.8, 5.0, 15.0))
    m.at[5.0]  # (1.160, None, None): Kimi needs 1/1.16 of MLA's compute at MLA's C=5 loss
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
import warnings
from typing import Mapping, Sequence

import numpy as np
from scipy import optimize

from analysis.results import FLOPS_PER_PFLOP_S_DAY, AnalysisError, AnalysisWarning

__all__ = [
    "AnalysisError", "pflops_days", "Envelope", "lower_envelope", "PowerLawFit",
    "fit_power_law", "fit_envelope", "OffsetPowerLawFit", "fit_power_law_offset",
    "ChinchillaFit", "fit_chinchilla", "IsoFlopFit", "fit_isoflop", "Multiplier",
    "efficiency_multiplier",
]


def pflops_days(flops):
    """FLOPs -> PFLOP/s-days (1 PFLOP/s-day = 1e15 FLOP/s x 86,400 s = 8.64e19 FLOPs)."""
    return np.asarray(flops, dtype=float) / FLOPS_PER_PFLOP_S_DAY


# ----------------------------------------------------------------------------- checks


def _as_positive(name: str, x, min_points: int = 1) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    if x.size < min_points:
        raise AnalysisError(f"{name} has {x.size} value(s); at least {min_points} are needed to fit")
    bad = ~np.isfinite(x)
    if bad.any():
        raise AnalysisError(f"{name} has {bad.sum()} non-finite value(s) (first at index {np.argmax(bad)}); drop those points before fitting")
    if (x <= 0).any():
        raise AnalysisError(f"{name} has non-positive value(s) (first at index {np.argmax(x <= 0)}); log-space fits need positive values")
    return x


def _same_length(**arrays) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise AnalysisError(f"inputs differ in length {lengths}; pass one value per point")


def _interval(samples: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    q = 50 * (1 - ci)
    return np.nanpercentile(samples, q, axis=0), np.nanpercentile(samples, 100 - q, axis=0)


def _resample_indices(rng, groups: np.ndarray | None, n: int):
    """Row indices of one bootstrap resample: whole groups (runs) when given, else rows."""
    if groups is None:
        return rng.integers(0, n, n)
    uniq = np.unique(groups)
    pick = rng.choice(uniq, size=len(uniq), replace=True)
    return np.concatenate([np.flatnonzero(groups == g) for g in pick])


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
        C = _as_positive(f"compute of run {run!r}", C)
        L = _as_positive(f"loss of run {run!r}", L)
        _same_length(C=C, L=L)
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
    C = _as_positive("compute C", C, min_points=3)
    L = _as_positive("loss L", L, min_points=3)
    _same_length(C=C, L=L)
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
            _same_length(C=C, runs=groups)
            if len(np.unique(groups)) < 3:
                warnings.warn(f"only {len(np.unique(groups))} run(s): bootstrapping points instead of runs", AnalysisWarning, stacklevel=2)
                groups = None
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(bootstrap):
            idx = _resample_indices(rng, groups, len(C))
            if len(np.unique(logC[idx])) < 2:
                continue  # degenerate resample: one compute value
            out.append(_loglog_lstsq(logC[idx], logL[idx]))
        samples = np.array(out).reshape(-1, 2)
        if len(samples) < bootstrap // 2:
            raise AnalysisError(f"only {len(samples)} of {bootstrap} bootstrap resamples were fittable; add runs")
        lo, hi = _interval(samples, ci)
        a_ci, b_ci = (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))
    return PowerLawFit(a, b, a_ci, b_ci, resid, samples, ci, (float(C.min()), float(C.max())), (float(L.min()), float(L.max())))


def fit_envelope(curves, C_min: float | None = None, C_max: float | None = None, bootstrap: int = 0,
                 seed: int = 0, ci: float = 0.95, method: str = "points") -> tuple[Envelope, PowerLawFit]:
    """Envelope of ``curves`` restricted to ``[C_min, C_max]`` and its ``L = a C^b`` fit.

    The bootstrap resamples runs (curves) with replacement, recomputes the envelope of the
    resample and refits it: the interval covers which runs happened to form the frontier.
    """
    data = _normalise_curves(curves)
    env = lower_envelope(data, method=method).restrict(C_min, C_max)
    if len(env.C) < 3:
        raise AnalysisError(f"the envelope has {len(env.C)} point(s) in C range [{C_min}, {C_max}]; widen the range or log more evaluations")
    fit = fit_power_law(env.C, env.L)
    if not bootstrap:
        return env, fit
    rng = np.random.default_rng(seed)
    names = list(data)
    out = []
    for _ in range(bootstrap):
        pick = rng.choice(len(names), size=len(names), replace=True)
        sub = lower_envelope({names[i]: data[names[i]] for i in pick}, method=method).restrict(C_min, C_max)
        if len(sub.C) >= 3 and len(np.unique(sub.C)) >= 2:
            out.append(_loglog_lstsq(np.log(sub.C), np.log(sub.L)))
    samples = np.array(out).reshape(-1, 2)
    if len(names) < 3:
        warnings.warn(f"envelope bootstrap over only {len(names)} run(s): its interval is not "
                      "meaningful; add runs", AnalysisWarning, stacklevel=2)
    if len(samples) < bootstrap // 2:
        # Keep the point fit (its range does not depend on the bootstrap); report no interval.
        warnings.warn(f"only {len(samples)} of {bootstrap} envelope bootstrap resamples were "
                      "fittable; the law is reported without an interval (add runs or widen the "
                      "C range)", AnalysisWarning, stacklevel=2)
        return env, fit
    lo, hi = _interval(samples, ci)
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
    C = _as_positive("compute C", C, min_points=4)
    L = _as_positive("loss L", L, min_points=4)
    _same_length(C=C, L=L)
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
            idx = _resample_indices(rng, groups, len(C))
            if len(np.unique(logC[idx])) >= 3:
                out.append(_fit_offset_once(logC[idx], L[idx]))
        samples = np.array(out).reshape(-1, 3)
        if len(samples) < bootstrap // 2:
            raise AnalysisError(f"only {len(samples)} of {bootstrap} bootstrap resamples were fittable; add points")
        lo, hi = _interval(samples, ci)
        cis = {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(("E", "A", "alpha"))}
    return OffsetPowerLawFit(E, A, alpha, cis, resid, samples, ci, (float(C.min()), float(C.max())), (float(L.min()), float(L.max())))


# ----------------------------------------------------------------- Chinchilla approach 3

# Initial-value grid of scaling.md: (e, a, b, alpha, beta), 5 * 6 * 6 * 5 * 5 = 4,500 starts.
_GRID_E = np.arange(-1.0, 1.01, 0.5)
_GRID_AB = np.arange(0.0, 25.1, 5.0)
_GRID_EXP = np.arange(0.0, 2.01, 0.5)
CHINCHILLA_GRID = np.array(list(itertools.product(_GRID_E, _GRID_AB, _GRID_AB, _GRID_EXP, _GRID_EXP)))
_PARAM_NAMES = ("E", "A", "B", "alpha", "beta")


def _chinchilla_loss_and_grad(theta, logN, logD, logL, delta):
    """Summed Huber loss of ``LSE(a - alpha logN, b - beta logD, e) - log L`` and its gradient.

    theta = (e, a, b, alpha, beta); the log-sum-exp is ``log(E + A/N^alpha + B/D^beta)``.
    With ``c = clip(r, -delta, delta)`` the Huber loss is ``c (r - c/2)`` and its
    derivative ``c``; the derivative of the LSE is the softmax weight of each term.
    """
    e, a, b, alpha, beta = theta
    tA = a - alpha * logN
    tB = b - beta * logD
    m = np.maximum(np.maximum(tA, tB), e)
    wA, wB, wE = np.exp(tA - m), np.exp(tB - m), np.exp(e - m)
    s = wA + wB + wE
    r = m + np.log(s) - logL
    c = np.clip(r, -delta, delta)
    loss = float(np.dot(c, r - 0.5 * c))
    g = c / s
    gA, gB = g * wA, g * wB
    grad = np.array([np.dot(g, wE), gA.sum(), gB.sum(), -np.dot(gA, logN), -np.dot(gB, logD)])
    return loss, grad


def _chinchilla_grid_losses(starts, logN, logD, logL, delta):
    """Objective at many parameter vectors at once (to rank starts for the bootstrap)."""
    e, a, b, al, be = (starts[:, i:i + 1] for i in range(5))
    t = np.stack(np.broadcast_arrays(a - al * logN, b - be * logD, e))
    r = np.logaddexp.reduce(t, axis=0) - logL
    absr = np.abs(r)
    return np.where(absr <= delta, 0.5 * r * r, delta * (absr - 0.5 * delta)).sum(axis=1)


_POLISH_OPTIONS = dict(maxiter=2000, ftol=1e-15, gtol=1e-12)


@contextlib.contextmanager
def _single_threaded_blas():
    """Run OpenBLAS single-threaded inside the block (Linux; a no-op elsewhere).

    L-BFGS-B calls LAPACK on 20x20 matrices thousands of times per fit; OpenBLAS's
    thread hand-offs make each call ~0.1-1 ms on a busy machine instead of ~2 us, a 5-10x
    slowdown of the 4,500-start grid. Same idea as ``threadpoolctl``, without the
    dependency.
    """
    handles = []
    try:
        with open("/proc/self/maps") as f:
            paths = sorted({ln.split()[-1] for ln in f if "openblas" in ln.lower() and ".so" in ln})
        for path in paths:
            lib = ctypes.CDLL(path)
            for prefix, suffix in itertools.product(("scipy_openblas", "openblas"), ("", "64_")):
                get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and set_ is not None:
                    handles.append((set_, get()))
                    set_(1)
                    break
    except (OSError, ValueError, IndexError):
        pass
    try:
        yield
    finally:
        for set_, n in handles:
            set_(n)


def _chinchilla_minimise(starts, logN, logD, logL, delta):
    """L-BFGS-B from every start (scipy's default tolerances), the lowest objective wins,
    then one more L-BFGS-B run from that optimum with tight tolerances (a polish: the
    summed Huber values near the optimum are small, and the default ``ftol`` is absolute
    below 1)."""
    best = None
    args = (logN, logD, logL, delta)
    with _single_threaded_blas():
        for x0 in starts:
            res = optimize.minimize(_chinchilla_loss_and_grad, x0, args=args, jac=True, method="L-BFGS-B")
            if np.all(np.isfinite(res.x)) and np.isfinite(res.fun) and (best is None or res.fun < best.fun):
                best = res
        if best is None:
            raise AnalysisError("every L-BFGS-B start diverged; check that N, D and L are in natural units (parameters, tokens, nats)")
        polished = optimize.minimize(_chinchilla_loss_and_grad, best.x, args=args, jac=True,
                                     method="L-BFGS-B", options=_POLISH_OPTIONS)
    if np.all(np.isfinite(polished.x)) and polished.fun <= best.fun:
        best = polished
    return best


@dataclasses.dataclass(frozen=True)
class ChinchillaFit:
    """``L(N, D) = E + A / N^alpha + B / D^beta`` (Chinchilla approach 3).

    ``samples`` rows are bootstrap ``(E, A, B, alpha, beta)``; ``cis`` maps each name to
    its interval. ``residuals`` are ``log L - log fit`` for every input point (excluded
    outliers included); ``excluded`` marks the points left out of the final fit.
    ``objective`` is the summed Huber loss at the optimum.
    """

    E: float
    A: float
    B: float
    alpha: float
    beta: float
    cis: Mapping[str, tuple[float, float]] | None
    residuals: np.ndarray
    excluded: np.ndarray
    samples: np.ndarray | None
    objective: float
    ci: float = 0.95

    def __call__(self, N, D):
        N, D = np.asarray(N, float), np.asarray(D, float)
        return self.E + self.A / N ** self.alpha + self.B / D ** self.beta

    @property
    def params(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in _PARAM_NAMES}

    def optimal_allocation(self, C_flops):
        """Loss-minimising ``(N_opt, D_opt)`` under ``C = 6 N D`` (C in FLOPs).

        ``N_opt = G (C/6)^(beta/(alpha+beta))``, ``G = (alpha A / (beta B))^(1/(alpha+beta))``.
        """
        C = np.asarray(C_flops, float)
        s = self.alpha + self.beta
        G = (self.alpha * self.A / (self.beta * self.B)) ** (1 / s)
        N = G * (C / 6) ** (self.beta / s)
        return N, C / (6 * N)


def fit_chinchilla(N, D, L, runs=None, bootstrap: int = 0, seed: int = 0, ci: float = 0.95,
                   delta: float = 1e-3, exclude_outliers: float | None = None,
                   bootstrap_starts: int = 32) -> ChinchillaFit:
    """Fit ``L = E + A/N^alpha + B/D^beta`` exactly as scaling.md prescribes.

    Parameterised as ``log L = LSE(a - alpha log N, b - beta log D, e)`` with
    ``E = exp(e)``, ``A = exp(a)``, ``B = exp(b)``. Objective: the Huber loss (``delta``)
    of the log-loss residuals, *summed* over points. L-BFGS-B (scipy, analytic
    gradient via ``jac=True``) runs from every point of :data:`CHINCHILLA_GRID`
    (e in -1..1 step 0.5, a and b in 0..25 step 5, alpha and beta in 0..2 step 0.5) and
    the lowest objective wins; that optimum is then polished by one more L-BFGS-B run
    with tight tolerances (ftol 1e-15, gtol 1e-12) so the fit does not stop early on the
    small summed Huber values. About 10 s on one CPU core for ~60 points.

    Args:
        N: non-embedding (activated) parameters per point; D: training tokens; L: final
            validation loss (nats).
        runs: run id per point (several points per run, e.g. checkpoints): the bootstrap
            resamples runs; otherwise each point is its own run.
        bootstrap: resamples for intervals. Each resample starts L-BFGS-B from the
            ``bootstrap_starts`` grid points with the lowest objective on that resample
            plus the full-data optimum (the full 4,500-start grid per resample would take
            minutes; on every case tried the best start is among these).
        exclude_outliers: ``k``: after a first fit, drop points whose log residual is more
            than ``k`` robust standard deviations (1.4826 MAD) from the median residual,
            then refit (the full grid again). ``None``: keep everything.
    """
    N = _as_positive("N (parameters)", N, min_points=6)
    D = _as_positive("D (tokens)", D, min_points=6)
    L = _as_positive("L (loss)", L, min_points=6)
    _same_length(N=N, D=D, L=L)
    logN, logD, logL = np.log(N), np.log(D), np.log(L)

    best = _chinchilla_minimise(CHINCHILLA_GRID, logN, logD, logL, delta)
    excluded = np.zeros(len(L), bool)
    if exclude_outliers is not None:
        r = logL - _chinchilla_log_pred(best.x, logN, logD)
        dev = np.abs(r - np.median(r))
        mad = 1.4826 * np.median(dev)
        excluded = dev > exclude_outliers * mad if mad > 0 else excluded
        if excluded.any():
            if (~excluded).sum() < 6:
                raise AnalysisError(f"outlier rule k={exclude_outliers} leaves {(~excluded).sum()} points; use a larger k")
            keep = ~excluded
            best = _chinchilla_minimise(CHINCHILLA_GRID, logN[keep], logD[keep], logL[keep], delta)
    keep = ~excluded
    theta = best.x
    resid = logL - _chinchilla_log_pred(theta, logN, logD)

    samples = cis = None
    if bootstrap:
        groups = np.arange(len(L)) if runs is None else np.asarray(runs)
        _same_length(L=L, runs=groups)
        kN, kD, kL, kG = logN[keep], logD[keep], logL[keep], groups[keep]
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(bootstrap):
            idx = _resample_indices(rng, kG, len(kL))
            obj = _chinchilla_grid_losses(CHINCHILLA_GRID, kN[idx], kD[idx], kL[idx], delta)
            starts = np.vstack([theta, CHINCHILLA_GRID[np.argsort(obj)[:bootstrap_starts]]])
            out.append(_chinchilla_minimise(starts, kN[idx], kD[idx], kL[idx], delta).x)
        raw = np.array(out)
        samples = np.column_stack([np.exp(raw[:, 0]), np.exp(raw[:, 1]), np.exp(raw[:, 2]), raw[:, 3], raw[:, 4]])
        lo, hi = _interval(samples, ci)
        cis = {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(_PARAM_NAMES)}
    e, a, b, alpha, beta = theta
    return ChinchillaFit(float(np.exp(e)), float(np.exp(a)), float(np.exp(b)), float(alpha), float(beta),
                         cis, resid, excluded, samples, float(best.fun), ci)


def _chinchilla_log_pred(theta, logN, logD):
    """log of the fitted loss at each point."""
    e, a, b, alpha, beta = theta
    return np.logaddexp.reduce(np.stack(np.broadcast_arrays(a - alpha * logN, b - beta * logD, e)), axis=0)


# -------------------------------------------------------------- IsoFLOP (approach 2)


@dataclasses.dataclass(frozen=True)
class IsoFlopFit:
    """Per-budget optima and the power laws through them.

    ``budgets[i]`` (the mean C of group i, units of the input), ``N_opt``, ``D_opt``,
    ``L_opt`` (parabola minimum), ``parabolas[i]`` = (c2, c1, c0) of ``L = c2 x^2 + c1 x
    + c0`` with ``x = ln N``. ``n_law``: ``N_opt = k C^a`` (``a`` = ``n_law.b``);
    ``d_law``: ``D_opt = k C^b``.
    """

    budgets: np.ndarray
    N_opt: np.ndarray
    D_opt: np.ndarray
    L_opt: np.ndarray
    parabolas: np.ndarray
    n_law: PowerLawFit
    d_law: PowerLawFit

    @property
    def a(self) -> float:
        """Exponent of ``N_opt ~ C^a``."""
        return self.n_law.b

    @property
    def b(self) -> float:
        """Exponent of ``D_opt ~ C^b``."""
        return self.d_law.b


def _group_budgets(C: np.ndarray, rtol: float) -> np.ndarray:
    order = np.argsort(C)
    labels = np.empty(len(C), int)
    g, ref = 0, C[order[0]]
    for i in order:
        if C[i] > ref * (1 + rtol):
            g, ref = g + 1, C[i]
        labels[i] = g
    return labels


def fit_isoflop(N, D, L, C, rtol: float = 0.05, bootstrap: int = 0, seed: int = 0) -> IsoFlopFit:
    """Chinchilla approach 2: per compute budget, a parabola of L in ln N gives N_opt.

    Points whose C agree within relative ``rtol`` form one budget. Each budget needs 3
    or more distinct N; ``D_opt`` is read off a straight line of ln D vs ln N through
    that budget's points (so no FLOP convention is assumed). Budgets whose parabola
    opens downward are skipped with a warning; an optimum outside the sampled N range is
    kept with a warning (it is an extrapolation). Then ``N_opt = k C^a`` and
    ``D_opt = k' C^b`` by :func:`fit_power_law` (``bootstrap`` over budgets).
    """
    N = _as_positive("N", N, min_points=3)
    D = _as_positive("D", D, min_points=3)
    L = _as_positive("L", L, min_points=3)
    C = _as_positive("C", C, min_points=3)
    _same_length(N=N, D=D, L=L, C=C)
    labels = _group_budgets(C, rtol)
    rows, skipped, extrapolated = [], [], []
    for g in np.unique(labels):
        m = labels == g
        x = np.log(N[m])
        budget = float(np.exp(np.mean(np.log(C[m]))))
        if len(np.unique(x)) < 3:
            skipped.append(f"{budget:.3g} (fewer than 3 sizes)")
            continue
        c2, c1, c0 = np.polyfit(x, L[m], 2)
        if c2 <= 0:
            skipped.append(f"{budget:.3g} (parabola opens downward)")
            continue
        x_opt = -c1 / (2 * c2)
        if not (x.min() <= x_opt <= x.max()):
            extrapolated.append(f"{budget:.3g}")
        slope, icpt = np.polyfit(x, np.log(D[m]), 1)
        rows.append((budget, np.exp(x_opt), np.exp(icpt + slope * x_opt), c0 - c1 ** 2 / (4 * c2), (c2, c1, c0)))
    if skipped:
        warnings.warn(f"isoFLOP: skipped budget(s) {', '.join(skipped)}", AnalysisWarning, stacklevel=2)
    if extrapolated:
        warnings.warn(f"isoFLOP: optimum outside the sampled sizes at budget(s) {', '.join(extrapolated)}; widen those sweeps", AnalysisWarning, stacklevel=2)
    if len(rows) < 3:
        raise AnalysisError(f"isoFLOP needs at least 3 usable budgets (3+ sizes each, convex), found {len(rows)}; add budgets or sizes")
    budgets, n_opt, d_opt, l_opt = (np.array([r[i] for r in rows]) for i in range(4))
    parab = np.array([r[4] for r in rows])
    n_law = fit_power_law(budgets, n_opt, bootstrap=bootstrap, seed=seed)
    d_law = fit_power_law(budgets, d_opt, bootstrap=bootstrap, seed=seed)
    return IsoFlopFit(budgets, n_opt, d_opt, l_opt, parab, n_law, d_law)


# ---------------------------------------------------------------- efficiency multiplier


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
    C = _as_positive("C_grid", C_grid)
    C = np.sort(C)
    if budgets is None:
        budgets = (float(C[0]), float(np.sqrt(C[0] * C[-1])), float(C[-1]))
    budgets = [float(b) for b in _as_positive("budgets", budgets)]

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
        lo, hi = _interval(boot, ci)
    at = {}
    for b in budgets:
        r = float(_ratio(fit_A, fit_B, np.array([b]))[0])
        if not np.isfinite(r):
            raise AnalysisError(f"no finite multiplier at budget {b:g}: arm B's law does not reach arm A's loss there")
        if lo is not None:
            with np.errstate(invalid="ignore", divide="ignore"):
                bb = np.array([_ratio(x, y, np.array([b]))[0] for x, y in pairs])
            bl, bh = _interval(bb[np.isfinite(bb)].reshape(-1, 1), ci)
            at[b] = (r, float(bl[0]), float(bh[0]))
        else:
            at[b] = (r, None, None)
    return Multiplier(C, loss, C_B, ratio, lo, hi, at, extrap)
