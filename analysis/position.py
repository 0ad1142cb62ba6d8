"""Position-bucketed evaluation results of a sweep, as input for the position-wise laws.

``experiments.evaluate`` writes, per evaluated checkpoint of a run::

    RUN_DIR/eval/step_00000123.json   {"run", "step", "seq_len", "bucket_size", "tokens",
                                       "flops_exact", "flops_6nd", "overall": {...},
                                       "buckets": [{"label": "0k-2k", "start", "end",
                                                    "loss", "tokens", "sequences"}, ...],
                                       "trailing": {"label": "trailing", "last", "loss",
                                                    "tokens", "sequences"}}

:func:`load_position_evals` reads the latest such file of every run of a sweep and turns
them into ``{bucket_label: {arm: (C in PFLOP/s-days, loss)}}``, one point per run: the
``bucket_data`` of :func:`analysis.plots.plot_position_wise` (MoBA Table 3)::

    sweep = results.load_sweep("runs/scaling")
    pos = position.load_position_evals(sweep, convention="exact")
    if pos.bucket_data:
        plots.plot_position_wise(position.fittable(pos.bucket_data)[0], "runs/scaling/pos")
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from pathlib import Path
from typing import Mapping

import numpy as np

from analysis.results import AnalysisWarning, Sweep, check_convention
from analysis.units import FLOPS_PER_PFLOP_S_DAY

_STEP_FILE = re.compile(r"^step_(\d+)\.json$")
TRAILING = "trailing"


@dataclasses.dataclass(frozen=True)
class PositionEvals:
    """Position-wise points of a sweep.

    ``bucket_data``: ``{label: {arm: (C, L)}}`` in panel order (buckets by start, the
    trailing window last), C in PFLOP/s-days, one point per run (its latest evaluated
    step). ``steps``: run -> the step used. ``skipped``: run -> why its files were not
    used (runs without an ``eval/`` folder are simply absent).
    """

    bucket_data: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]
    steps: Mapping[str, int]
    skipped: Mapping[str, str]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def latest_eval_file(run_dir: Path) -> Path | None:
    """The ``eval/step_*.json`` of ``run_dir`` with the highest step, or ``None``."""
    eval_dir = Path(run_dir) / "eval"
    if not eval_dir.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in eval_dir.iterdir() if (m := _STEP_FILE.match(p.name))]
    return max(found)[1] if found else None


def _read_eval(path: Path, convention: str) -> tuple[float, list[tuple[str, float, float]]]:
    """-> (FLOPs in ``convention``, [(label, sort key, loss)]); raises ValueError on a bad file."""
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path.name} is not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    flops = data.get(f"flops_{convention}")
    if not _finite(flops) or flops <= 0:
        raise ValueError(f"{path.name} has no positive flops_{convention}")
    points = []
    for b in data.get("buckets") or []:
        if isinstance(b, dict) and isinstance(b.get("label"), str) and _finite(b.get("loss")) \
                and b.get("tokens", 1):
            points.append((b["label"], float(b.get("start", len(points))), float(b["loss"])))
    t = data.get("trailing")
    if isinstance(t, dict) and _finite(t.get("loss")) and t.get("tokens", 1):
        points.append((t.get("label") or TRAILING, math.inf, float(t["loss"])))
    if not points:
        raise ValueError(f"{path.name} has no bucket with a finite loss")
    return float(flops), points


def load_position_evals(sweep: Sweep, convention: str = "exact") -> PositionEvals:
    """Latest position-wise evaluation of every run of ``sweep`` (see the module doc).

    A run whose latest file is unreadable or lacks the FLOPs in ``convention`` is
    skipped with one :class:`AnalysisWarning`; buckets with no tokens (a ``null`` loss)
    are left out. Returns empty ``bucket_data`` when no run has been evaluated.
    """
    check_convention(convention)
    if sweep.source is None or not Path(sweep.source).is_dir():
        return PositionEvals({}, {}, {})
    per_label: dict[str, dict[str, list[tuple[float, float]]]] = {}
    order: dict[str, float] = {}
    steps, skipped = {}, {}
    for run in sweep.runs:
        path = latest_eval_file(Path(sweep.source) / run.run)
        if path is None:
            continue
        try:
            flops, points = _read_eval(path, convention)
        except ValueError as e:
            skipped[run.run] = str(e)
            continue
        steps[run.run] = int(_STEP_FILE.match(path.name).group(1))
        for label, key, loss in points:
            order[label] = min(order.get(label, math.inf), key)
            per_label.setdefault(label, {}).setdefault(run.arm, []).append(
                (flops / FLOPS_PER_PFLOP_S_DAY, loss))
    if skipped:
        listing = "; ".join(f"{k} ({v})" for k, v in skipped.items())
        warnings.warn(f"position-wise evaluations: skipped {len(skipped)} run(s): {listing}",
                      AnalysisWarning, stacklevel=2)
    bucket_data = {}
    for label in sorted(per_label, key=lambda lb: (order[lb], lb)):
        bucket_data[label] = {}
        for arm, pts in per_label[label].items():
            arr = np.array(sorted(pts))
            bucket_data[label][arm] = (arr[:, 0], arr[:, 1])
    return PositionEvals(bucket_data, steps, skipped)


def fittable(bucket_data, min_points: int = 3) -> tuple[dict, list[str]]:
    """The (bucket, arm) series a power law can be fitted to, and why the others were dropped.

    A series needs ``min_points`` runs at 2 or more distinct computes; a bucket left
    with no arm is dropped.
    """
    kept, dropped = {}, []
    for label, arms in bucket_data.items():
        for arm, (C, L) in arms.items():
            n, distinct = len(C), len(np.unique(C))
            if n < min_points or distinct < 2:
                dropped.append(f"{label}/{arm}: {n} evaluated run(s) at {distinct} distinct "
                               f"compute(s); a fit needs {min_points} at 2 or more")
                continue
            kept.setdefault(label, {})[arm] = (C, L)
    return kept, dropped
