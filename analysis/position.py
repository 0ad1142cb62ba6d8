"""Position-bucketed evaluation results of a sweep, as input for the position-wise laws.

``experiments.evaluate`` writes, per evaluated checkpoint *and settings* of a run::

    RUN_DIR/eval/step_00000123_len256_b32_t32_3f9c2a1b.json
        {"run", "step", "seq_len", "bucket_size", "trailing_size", "max_docs", "settings",
         "tokens", "flops_exact", "flops_6nd", "overall": {...},
         "buckets": [{"label": "0-32", "start", "end", "loss", "tokens", "sequences"}, ...],
         "trailing": {"label": "trailing", "last", "loss", "tokens", "sequences"},
         "retrieval": {"needle": {...}, "mqar": {...}}}

Files of the older scheme, ``RUN_DIR/eval/step_00000123.json``, are read too, under the
settings they record (their ``max_docs`` was not recorded: :attr:`EvalSetting.max_docs`
is ``None``, a setting of its own).

**One setting per figure.** Bucket losses are only comparable between runs evaluated with
the same length, bucket size, trailing size and documents (:class:`EvalSetting`; the
probes do not change them). :func:`load_position_evals` uses the setting evaluated by
the most runs (ties: the longer length, then more documents, then finer buckets), or the
one it is given, and per run the latest step evaluated with it. Runs evaluated only with
other settings are listed in ``skipped``, as are runs with an unreadable evaluation file.
The result is ``{bucket_label: {arm: (C in PFLOP/s-days, loss)}}``, one point per run: the
``bucket_data`` of :func:`analysis.plots.plot_position_wise` (MoBA Table 3)::

    sweep = results.load_sweep("runs/scaling")
    pos = position.load_position_evals(sweep, convention="exact")
    if pos.bucket_data:
        print(pos.setting.describe())
        plots.plot_position_wise(position.fittable(pos.bucket_data)[0], "runs/scaling/pos")
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import warnings
from collections import Counter
from pathlib import Path
from typing import Mapping

import numpy as np

from analysis.results import AnalysisWarning, Sweep, check_convention, json_error
from analysis.units import FLOPS_PER_PFLOP_S_DAY

# step_00000050.json (old scheme) or step_00000050_len256_b32_t32_<hash>.json
_STEP_FILE = re.compile(r"^step_(\d+)(?:_len\d+_b\d+_t\d+_[0-9a-f]+)?\.json$")
TRAILING = "trailing"


@dataclasses.dataclass(frozen=True)
class EvalSetting:
    """The evaluation settings that change bucket losses.

    ``max_docs``: 0 = every held-out document, ``None`` = not recorded (old files).
    """

    seq_len: int
    bucket_size: int
    trailing: int
    max_docs: int | None

    def describe(self) -> str:
        docs = ("all held-out documents" if self.max_docs == 0 else
                "documents not recorded" if self.max_docs is None else
                f"the first {self.max_docs} held-out documents")
        return (f"evaluation length {self.seq_len}, {self.bucket_size}-token buckets, "
                f"trailing {self.trailing}, {docs}")

    def short(self) -> str:
        docs = "all" if self.max_docs == 0 else "?" if self.max_docs is None else self.max_docs
        return f"len{self.seq_len}/b{self.bucket_size}/t{self.trailing}/docs={docs}"

    def _rank(self) -> tuple:
        docs = math.inf if self.max_docs == 0 else -1 if self.max_docs is None else self.max_docs
        return (self.seq_len, docs, -self.bucket_size, -self.trailing)


@dataclasses.dataclass(frozen=True)
class PositionEvals:
    """Position-wise points of a sweep at one evaluation setting.

    ``bucket_data``: ``{label: {arm: (C, L)}}`` in panel order (buckets by start, the
    trailing window last), C in PFLOP/s-days, one point per run (its latest step evaluated
    at ``setting``). ``steps``: run -> the step used. ``skipped``: run -> why it was not
    used (runs without an ``eval/`` folder are simply absent). ``setting``: the
    :class:`EvalSetting` of every point (``None`` when no run was evaluated).
    """

    bucket_data: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]]
    steps: Mapping[str, int]
    skipped: Mapping[str, str]
    setting: EvalSetting | None = None


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def eval_files(run_dir: Path) -> list[tuple[int, Path]]:
    """Every ``eval/step_*.json`` of ``run_dir`` (both naming schemes) as ``(step, path)``."""
    eval_dir = Path(run_dir) / "eval"
    if not eval_dir.is_dir():
        return []
    return sorted((int(m.group(1)), p) for p in eval_dir.iterdir() if (m := _STEP_FILE.match(p.name)))


def latest_eval_file(run_dir: Path) -> Path | None:
    """The ``eval/step_*.json`` of ``run_dir`` with the highest step, or ``None``."""
    found = eval_files(run_dir)
    return found[-1][1] if found else None


def read_eval_json(path: Path) -> dict:
    """An evaluation file's JSON object; raises ValueError (naming the file) when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{json_error(path, e)}; fix it, or delete it and run "
                         "experiments.evaluate again") from None
    if not isinstance(data, dict):
        raise ValueError(f"{Path(path).name} is not a JSON object")
    return data


def eval_setting(data: dict, name: str = "file") -> EvalSetting:
    """The :class:`EvalSetting` an evaluation file records (old files: no ``max_docs``)."""
    trailing = data.get("trailing_size")
    if trailing is None and isinstance(data.get("trailing"), dict):
        trailing = data["trailing"].get("last")
    vals = (data.get("seq_len"), data.get("bucket_size"), trailing)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise ValueError(f"{name} does not record seq_len, bucket_size and the trailing size")
    docs = data.get("max_docs")
    return EvalSetting(*vals, docs if isinstance(docs, int) and not isinstance(docs, bool) else None)


def _points(data: dict, name: str, convention: str) -> tuple[float, list[tuple[str, float, float]]]:
    """-> (FLOPs in ``convention``, [(label, sort key, loss)]); raises ValueError on a bad file."""
    flops = data.get(f"flops_{convention}")
    if not _finite(flops) or flops <= 0:
        raise ValueError(f"{name} has no positive flops_{convention}")
    points = []
    for b in data.get("buckets") or []:
        if isinstance(b, dict) and isinstance(b.get("label"), str) and _finite(b.get("loss")) \
                and b.get("tokens", 1):
            points.append((b["label"], float(b.get("start", len(points))), float(b["loss"])))
    t = data.get("trailing")
    if isinstance(t, dict) and _finite(t.get("loss")) and t.get("tokens", 1):
        points.append((t.get("label") or TRAILING, math.inf, float(t["loss"])))
    if not points:
        raise ValueError(f"{name} has no bucket with a finite loss")
    return float(flops), points


def _read_run(run_dir: Path, convention: str) -> list[tuple[int, EvalSetting, tuple]]:
    """-> [(step, setting, (flops, points))] of every file; ValueError if any file is bad."""
    out = []
    for step, path in eval_files(run_dir):
        data = read_eval_json(path)
        out.append((step, eval_setting(data, path.name), _points(data, path.name, convention)))
    return out


def choose_setting(settings_per_run: Mapping[str, set[EvalSetting]]) -> EvalSetting | None:
    """The setting evaluated by the most runs (ties: longer length, more documents, finer
    buckets, shorter trailing window); ``None`` when there is none."""
    counts = Counter(s for settings in settings_per_run.values() for s in settings)
    if not counts:
        return None
    return max(counts, key=lambda s: (counts[s], s._rank()))


def load_position_evals(sweep: Sweep, convention: str = "exact",
                        setting: EvalSetting | None = None) -> PositionEvals:
    """Position-wise evaluations of the runs of ``sweep`` at one setting (see the module doc).

    ``setting``: the :class:`EvalSetting` to use (default: :func:`choose_setting`). A run
    with an unreadable evaluation file (or one lacking the FLOPs in ``convention``), or
    without an evaluation at the setting, is skipped; the skipped runs are listed in one
    :class:`AnalysisWarning`. Buckets with no tokens (a ``null`` loss) are left out.
    Returns empty ``bucket_data`` when no run has been evaluated.
    """
    check_convention(convention)
    if sweep.eval_run_dir("") is None or not sweep.eval_run_dir("").is_dir():
        return PositionEvals({}, {}, {})
    found: dict[str, list] = {}
    skipped = {}
    for run in sweep.runs:
        try:
            files = _read_run(sweep.eval_run_dir(run.run), convention)
        except ValueError as e:
            skipped[run.run] = str(e)
            continue
        if files:
            found[run.run] = files
    if setting is None:
        setting = choose_setting({r: {s for _, s, _ in files} for r, files in found.items()})
    per_label: dict[str, dict[str, list[tuple[float, float]]]] = {}
    order: dict[str, float] = {}
    steps = {}
    for run in sweep.runs:
        if run.run not in found:
            continue
        at = [(step, pts) for step, s, pts in found[run.run] if s == setting]
        if not at:
            others = sorted({s.short() for _, s, _ in found[run.run]})
            skipped[run.run] = f"not evaluated at {setting.short()} (has {', '.join(others)})"
            continue
        step, (flops, points) = max(at, key=lambda x: x[0])
        steps[run.run] = step
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
    return PositionEvals(bucket_data, steps, skipped, setting if steps else None)


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
