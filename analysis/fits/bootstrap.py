"""Bootstrap helpers of the fits: which rows a resample takes, and percentile intervals.

Every fit resamples the independent unit: whole runs when the points carry run ids (the
points of one run share its noise), otherwise single points; intervals are the
``(1 - ci) / 2`` and ``(1 + ci) / 2`` percentiles of the resampled parameters, NaNs
ignored.
"""
from __future__ import annotations

import numpy as np


def percentile_interval(samples: np.ndarray, ci: float) -> tuple[np.ndarray, np.ndarray]:
    q = 50 * (1 - ci)
    return np.nanpercentile(samples, q, axis=0), np.nanpercentile(samples, 100 - q, axis=0)


def resample_indices(rng, groups: np.ndarray | None, n: int):
    """Row indices of one bootstrap resample: whole groups (runs) when given, else rows."""
    if groups is None:
        return rng.integers(0, n, n)
    uniq = np.unique(groups)
    pick = rng.choice(uniq, size=len(uniq), replace=True)
    return np.concatenate([np.flatnonzero(groups == g) for g in pick])
