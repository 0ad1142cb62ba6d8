"""IsoFLOP profiles (Chinchilla approach 2): per budget a parabola of loss in ln N gives
the optimal size; power laws ``N_opt ~ C^a``, ``D_opt ~ C^b`` through the optima."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np

from analysis.fits.inputs import as_positive, same_length
from analysis.fits.power_law import PowerLawFit, fit_power_law
from analysis.results import AnalysisError, AnalysisWarning


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
    N = as_positive("N", N, min_points=3)
    D = as_positive("D", D, min_points=3)
    L = as_positive("L", L, min_points=3)
    C = as_positive("C", C, min_points=3)
    same_length(N=N, D=D, L=L, C=C)
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
