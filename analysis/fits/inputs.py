"""Input checks shared by the fits: positive finite arrays of equal length."""
from __future__ import annotations

import numpy as np

from analysis.results import AnalysisError


def as_positive(name: str, x, min_points: int = 1) -> np.ndarray:
    x = np.asarray(x, dtype=float).ravel()
    if x.size < min_points:
        raise AnalysisError(f"{name} has {x.size} value(s); at least {min_points} are needed to fit")
    bad = ~np.isfinite(x)
    if bad.any():
        raise AnalysisError(f"{name} has {bad.sum()} non-finite value(s) (first at index {np.argmax(bad)}); drop those points before fitting")
    if (x <= 0).any():
        raise AnalysisError(f"{name} has non-positive value(s) (first at index {np.argmax(x <= 0)}); log-space fits need positive values")
    return x


def same_length(**arrays) -> None:
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) > 1:
        raise AnalysisError(f"inputs differ in length {lengths}; pass one value per point")
