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

One module per concern: :mod:`~analysis.fits.power_law` (envelope, ``a C^b``,
``E + A C^-alpha``), :mod:`~analysis.fits.chinchilla` (approach 3),
:mod:`~analysis.fits.isoflop` (approach 2), :mod:`~analysis.fits.multiplier`,
:mod:`~analysis.fits.noise` (how validation noise moves the envelope),
:mod:`~analysis.fits.bootstrap` (resampling and intervals) and
:mod:`~analysis.fits.inputs` (input checks); this package re-exports the public names.

Every fit returns a small frozen dataclass with the parameters, optional bootstrap
intervals (and the bootstrap samples, so derived quantities get intervals too) and
residuals. Bad inputs raise :class:`AnalysisError`; a fit never returns NaN silently.

Example (the Kimi Linear laws, C in PFLOP/s-days)::

    mla = PowerLawFit.from_params(2.3092, -0.0536)
    kimi = PowerLawFit.from_params(2.2879, -0.0527)
    m = efficiency_multiplier(mla, kimi, budgets=(1.8, 5.0, 15.0))
    m.at[5.0]  # (1.160, None, None): Kimi needs 1/1.16 of MLA's compute at MLA's C=5 loss
"""
from analysis.fits.chinchilla import (CHINCHILLA_GRID, ChinchillaFit, _chinchilla_loss_and_grad,  # noqa: F401
                                      fit_chinchilla)
from analysis.fits.isoflop import IsoFlopFit, fit_isoflop
from analysis.fits.multiplier import Multiplier, efficiency_multiplier
from analysis.fits.noise import envelope_noise_shift, expected_min_shift, min_shift_bound
from analysis.fits.power_law import (MIN_BOOTSTRAP_RUNS, Envelope, OffsetPowerLawFit, PowerLawFit,
                                     fit_envelope, fit_power_law, fit_power_law_offset,
                                     lower_envelope)
from analysis.results import AnalysisError, AnalysisWarning
from analysis.units import pflops_days

__all__ = [
    "AnalysisError", "AnalysisWarning", "pflops_days", "MIN_BOOTSTRAP_RUNS", "Envelope",
    "lower_envelope",
    "PowerLawFit", "fit_power_law", "fit_envelope", "OffsetPowerLawFit", "fit_power_law_offset",
    "CHINCHILLA_GRID", "ChinchillaFit", "fit_chinchilla", "IsoFlopFit", "fit_isoflop",
    "Multiplier", "efficiency_multiplier", "envelope_noise_shift", "expected_min_shift",
    "min_shift_bound",
]
# Also importable for the gradient check in tests/test_fits.py: _chinchilla_loss_and_grad.
