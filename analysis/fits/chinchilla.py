"""The parametric law ``L(N, D) = E + A / N^alpha + B / D^beta`` (Chinchilla approach 3).

Fitted exactly as ``shared/design/scaling.md`` prescribes: the log-sum-exp form, Huber
(delta 1e-3) on log-loss with the terms *summed*, L-BFGS-B with analytic gradients from
the full grid of starts, best of the grid, then a tight polish; intervals by bootstrap
over runs.
"""
from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import itertools
from typing import Mapping

import numpy as np
from scipy import optimize

from analysis.fits.bootstrap import percentile_interval, resample_indices
from analysis.fits.inputs import as_positive, same_length
from analysis.results import AnalysisError


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
    outliers included); ``excluded`` marks the points left out of the final fit and
    ``exclusion`` says by which rule, in words ("none", "the 5 highest-loss points
    dropped", "residuals beyond 5.0 robust SD dropped (2 points)").
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
    exclusion: str = "none"

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
                   drop_highest: int | None = None, bootstrap_starts: int = 32) -> ChinchillaFit:
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
        drop_highest: ``k``: leave out the ``k`` points with the highest loss before
            fitting (ties broken by input order), the rule of Besiroglu et al. (2024),
            "Chinchilla Scaling: A replication attempt", who drop the 5 highest-loss of
            the 245 points extracted from Hoffmann et al.'s Figure 4 and fit the other
            240. One fit, no first pass; the bootstrap resamples the kept points.
            Exclusive with ``exclude_outliers`` (giving both raises AnalysisError).
            ``None`` or 0: keep everything.
    """
    N = as_positive("N (parameters)", N, min_points=6)
    D = as_positive("D (tokens)", D, min_points=6)
    L = as_positive("L (loss)", L, min_points=6)
    same_length(N=N, D=D, L=L)
    logN, logD, logL = np.log(N), np.log(D), np.log(L)
    if exclude_outliers is not None and drop_highest is not None:
        raise AnalysisError(f"exclude_outliers={exclude_outliers} and drop_highest={drop_highest} are two "
                            "exclusion rules; give at most one")

    excluded = np.zeros(len(L), bool)
    exclusion = "none"
    if drop_highest:
        k = int(drop_highest)
        if k != drop_highest or k < 0:
            raise AnalysisError(f"drop_highest={drop_highest!r}: give a whole number of points >= 0")
        if len(L) - k < 6:
            raise AnalysisError(f"drop_highest={k} leaves {len(L) - k} of {len(L)} points; the law needs at least 6")
        excluded[np.argsort(-L, kind="stable")[:k]] = True
        exclusion = f"the {k} highest-loss point{'s' if k > 1 else ''} dropped"
    best = _chinchilla_minimise(CHINCHILLA_GRID, logN[~excluded], logD[~excluded], logL[~excluded], delta)
    if exclude_outliers is not None:
        r = logL - _chinchilla_log_pred(best.x, logN, logD)
        dev = np.abs(r - np.median(r))
        mad = 1.4826 * np.median(dev)
        excluded = dev > exclude_outliers * mad if mad > 0 else excluded
        exclusion = f"residuals beyond {exclude_outliers:g} robust SD dropped ({int(excluded.sum())} points)"
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
        same_length(L=L, runs=groups)
        kN, kD, kL, kG = logN[keep], logD[keep], logL[keep], groups[keep]
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(bootstrap):
            idx = resample_indices(rng, kG, len(kL))
            obj = _chinchilla_grid_losses(CHINCHILLA_GRID, kN[idx], kD[idx], kL[idx], delta)
            starts = np.vstack([theta, CHINCHILLA_GRID[np.argsort(obj)[:bootstrap_starts]]])
            out.append(_chinchilla_minimise(starts, kN[idx], kD[idx], kL[idx], delta).x)
        raw = np.array(out)
        samples = np.column_stack([np.exp(raw[:, 0]), np.exp(raw[:, 1]), np.exp(raw[:, 2]), raw[:, 3], raw[:, 4]])
        lo, hi = percentile_interval(samples, ci)
        cis = {k: (float(lo[i]), float(hi[i])) for i, k in enumerate(_PARAM_NAMES)}
    e, a, b, alpha, beta = theta
    return ChinchillaFit(float(np.exp(e)), float(np.exp(a)), float(np.exp(b)), float(alpha), float(beta),
                         cis, resid, excluded, samples, float(best.fun), ci, exclusion)


def _chinchilla_log_pred(theta, logN, logD):
    """log of the fitted loss at each point."""
    e, a, b, alpha, beta = theta
    return np.logaddexp.reduce(np.stack(np.broadcast_arrays(a - alpha * logN, b - beta * logD, e)), axis=0)
