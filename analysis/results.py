"""Reading finished sweeps (and hand-made CSVs) into validation-loss curves.

A sweep directory, as written by the sweep runner, looks like::

    DIR/results.jsonl          one JSON object per finished run (arm, size, parameter
                               counts, tokens, budget, final_val_loss, status, and
                               optionally the arm's ``arm_display`` name and
                               ``arm_colour`` colormap for figures, ...)
    DIR/<run>/metrics.jsonl    one JSON object per logged step; ``val_loss`` appears only
                               on evaluation steps, next to the cumulative FLOPs so far
                               in both conventions (``flops_exact``, ``flops_6nd``) and,
                               in runs trained since it existed, the loss's standard
                               error over the held-out sequences (``val_loss_se``)

Usage from a notebook::

    from analysis import results
    sweep = results.load_sweep("runs/scaling_v1")
    for run in sweep.by_arm("moba"):
        C, L = run.compute("exact"), run.val_loss      # C in PFLOP/s-days

Everything downstream (``analysis.fits``, ``analysis.plots``) works on the plain arrays
held by :class:`RunCurve`; nothing here depends on JAX.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from analysis import arm_style
from analysis.records import (AnalysisError, AnalysisWarning,  # noqa: F401  (re-exported)
                              finite as _finite, json_error, read_jsonl as _read_jsonl)
from analysis.units import CONVENTIONS, FLOPS_PER_PFLOP_S_DAY  # noqa: F401  (re-exported)


@dataclasses.dataclass(frozen=True)
class RunCurve:
    """One run: its metadata and its validation-loss curve along training.

    ``flops`` maps a convention (``"exact"`` or ``"6nd"``) to the cumulative training
    FLOPs at each evaluation; a CSV-loaded curve has only the convention it was given in.
    Arrays are sorted by compute and all have the same length (one entry per evaluation).
    """

    run: str
    arm: str
    size: str
    val_loss: np.ndarray
    flops: Mapping[str, np.ndarray]
    tokens: np.ndarray | None = None
    n_params_nonembed: int | None = None
    n_params: int | None = None
    total_tokens: int | None = None
    budget_flops: float | None = None
    budget_convention: str | None = None
    final_val_loss: float | None = None
    # Standard error of each evaluation's loss over its held-out sequences (NaN where none
    # was logged); None for a run that logged none (trained before ``val_loss_se`` existed).
    val_loss_se: np.ndarray | None = None

    def compute(self, convention: str = "exact") -> np.ndarray:
        """Cumulative compute at each evaluation, in PFLOP/s-days."""
        return self.flops_in(convention) / FLOPS_PER_PFLOP_S_DAY

    def flops_in(self, convention: str = "exact") -> np.ndarray:
        """Cumulative FLOPs at each evaluation in ``convention``."""
        check_convention(convention)
        if convention not in self.flops:
            raise AnalysisError(
                f"run {self.run!r} has no {convention!r} FLOPs (it has "
                f"{sorted(self.flops)}); pass convention={next(iter(self.flops))!r}"
            )
        return self.flops[convention]

    @property
    def final_loss(self) -> float:
        """The run's reported final validation loss (else its last evaluation)."""
        if self.final_val_loss is not None:
            return float(self.final_val_loss)
        return float(self.val_loss[-1])

    @property
    def final_se(self) -> float | None:
        """Standard error of the last evaluation's loss; None when it was not logged."""
        ok = self.val_loss_se is not None and np.isfinite(self.val_loss_se[-1])
        return float(self.val_loss_se[-1]) if ok else None

    def final_compute(self, convention: str = "exact") -> float:
        """Compute at the last evaluation, in PFLOP/s-days."""
        return float(self.compute(convention)[-1])


@dataclasses.dataclass(frozen=True)
class Sweep:
    """The usable runs of a sweep, and what was left out and why.

    ``runs`` is sorted by (arm order of first appearance, non-embedding size).
    ``skipped`` maps a run name to the reason it was dropped. ``arm_display`` and
    ``arm_colour`` hold the display names and colour families (matplotlib colormap
    names) the result files declare, per arm; arms without them are shown by their own
    name in an automatic colour (:meth:`display_name`, :meth:`colour_family`).
    """

    runs: tuple[RunCurve, ...]
    source: Path | None = None
    skipped: Mapping[str, str] = dataclasses.field(default_factory=dict)
    arm_display: Mapping[str, str] = dataclasses.field(default_factory=dict)
    arm_colour: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Where the runs' evaluations (``<run>/eval/``) live: ``source`` unless they were
    # written elsewhere (``experiments.evaluate --out=DIR``; report ``--evals=DIR``).
    eval_source: Path | None = None

    def eval_run_dir(self, run: str) -> Path | None:
        """The folder holding ``eval/`` of ``run`` (None for a sweep without a directory)."""
        root = self.eval_source or self.source
        return None if root is None else Path(root) / run

    @property
    def arms(self) -> list[str]:
        """Arm names in order of first appearance."""
        return list(dict.fromkeys(r.arm for r in self.runs))

    def display_name(self, arm: str) -> str:
        """The arm's declared display name (``arm_display``), else its own name."""
        return arm_style.display_name(arm, self.arm_display)

    def colour_family(self, arm: str) -> str:
        """The arm's colormap name: its declared ``arm_colour`` unless an earlier arm of the
        sweep has it, else an automatic one distinct from the other arms'."""
        return self.colour_families[arm]

    @property
    def labels(self) -> dict[str, str]:
        """``{arm: display name}`` for every arm (the ``labels=`` of the figure functions)."""
        return arm_style.display_names(self.arms, self.arm_display)

    @property
    def colour_families(self) -> dict[str, str]:
        """``{arm: colormap name}`` for every arm, as :meth:`colour_family`."""
        return arm_style.colour_families(self.arms, self.arm_colour)

    def by_arm(self, arm: str) -> list[RunCurve]:
        """The runs of one arm, smallest model first."""
        runs = [r for r in self.runs if r.arm == arm]
        if not runs:
            raise AnalysisError(f"no runs for arm {arm!r}; the sweep has arms {self.arms}")
        return runs

    def curves(self, arm: str, convention: str = "exact") -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{run: (C in PFLOP/s-days, val_loss)}`` for one arm: the input of ``fits.lower_envelope``."""
        return {r.run: (r.compute(convention), r.val_loss) for r in self.by_arm(arm)}

    def final_points(self, arm: str, convention: str = "exact") -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(final compute in PFLOP/s-days, final loss, run names) per run of one arm."""
        runs = self.by_arm(arm)
        C = np.array([r.final_compute(convention) for r in runs])
        L = np.array([r.final_loss for r in runs])
        return C, L, [r.run for r in runs]


def check_convention(convention: str) -> None:
    """Raises :class:`AnalysisError` unless the analysis can read ``convention``."""
    if convention not in CONVENTIONS:
        raise AnalysisError(f"unknown FLOP convention {convention!r}; use one of {CONVENTIONS}")


_check_convention = check_convention  # the name before it was public


def _arm_styles(rows: Iterable[Mapping], where) -> tuple[dict[str, str], dict[str, str]]:
    """``({arm: arm_display}, {arm: arm_colour})`` from records that carry those optional
    fields (non-empty strings). Records of one arm that disagree: the first wins, with a
    warning."""
    found: dict[str, dict[str, str]] = {"arm_display": {}, "arm_colour": {}}
    clashes = []
    for row in rows:
        for key, per_arm in found.items():
            value = row.get(key)
            if not isinstance(value, str) or not value.strip():
                continue
            value = value.strip()
            first = per_arm.setdefault(row["arm"], value)
            if first != value:
                clashes.append(f"{row['arm']} {key} {first!r} vs {value!r}")
    if clashes:
        warnings.warn(f"{where}: runs of one arm disagree ({'; '.join(dict.fromkeys(clashes))}); "
                      "using the first value", AnalysisWarning, stacklevel=3)
    return found["arm_display"], found["arm_colour"]


def _warn_skipped(skipped: Mapping[str, str], where) -> None:
    if skipped:
        listing = "; ".join(f"{k} ({v})" for k, v in skipped.items())
        warnings.warn(f"{where}: skipped {len(skipped)} run(s): {listing}", AnalysisWarning, stacklevel=3)


def _sorted_runs(runs: Iterable[RunCurve]) -> tuple[RunCurve, ...]:
    runs = list(runs)
    arm_order = {a: i for i, a in enumerate(dict.fromkeys(r.arm for r in runs))}

    def key(r: RunCurve):
        size = r.n_params_nonembed if r.n_params_nonembed is not None else -1
        return (arm_order[r.arm], size, float(np.max(next(iter(r.flops.values())))), r.run)

    return tuple(sorted(runs, key=key))


def load_sweep(directory: str | Path) -> Sweep:
    """Load every finished run of a sweep directory with its validation curve.

    A run is used when its ``results.jsonl`` record has ``status == "done"`` and a finite
    ``final_val_loss``, and its ``metrics.jsonl`` holds at least one evaluation, all with
    finite ``val_loss`` and FLOPs. Other runs are skipped with one
    :class:`AnalysisWarning` listing them (``Sweep.skipped`` keeps the reasons); runs
    not marked done are skipped silently (they may still be training). A run listed
    twice keeps its last record.

    Raises:
        AnalysisError: ``directory`` is not a sweep directory, has no finished runs, or
            none of them has a usable loss curve.
    """
    root = Path(directory)
    index = root / "results.jsonl"
    if not root.is_dir():
        raise AnalysisError(f"{root} is not a directory; pass the sweep's output directory")
    if not index.is_file():
        raise AnalysisError(
            f"{root} is not a sweep directory (no results.jsonl); pass the directory the "
            "sweep runner wrote, or use curves_from_csv for a CSV"
        )
    records: dict[str, dict] = {}
    for rec in _read_jsonl(index):
        name = rec.get("run")
        if not isinstance(name, str) or not name:
            raise AnalysisError(f"{index}: a record has no 'run' name: {json.dumps(rec)[:120]}")
        records[name] = rec
    done = {k: v for k, v in records.items() if v.get("status") == "done"}
    if not done:
        raise AnalysisError(
            f"{index} lists no finished runs ({len(records)} record(s), none with "
            "status 'done'); wait for the sweep or point at another directory"
        )

    runs, skipped = [], {}
    for name, rec in done.items():
        try:
            runs.append(_load_run(root, name, rec))
        except _SkipRun as e:
            skipped[name] = str(e)
    _warn_skipped(skipped, root)
    if not runs:
        raise AnalysisError(
            f"{root}: none of the {len(done)} finished run(s) has a usable validation "
            f"curve ({'; '.join(f'{k}: {v}' for k, v in skipped.items())}); rerun them "
            "or check the metrics files"
        )
    used = {r.run for r in runs}
    display, colour = _arm_styles((rec for name, rec in done.items() if name in used), index)
    return Sweep(runs=_sorted_runs(runs), source=root, skipped=skipped, arm_display=display,
                 arm_colour=colour)


class _SkipRun(Exception):
    pass


def _load_run(root: Path, name: str, rec: dict) -> RunCurve:
    for key in ("arm", "size"):
        if not isinstance(rec.get(key), str):
            raise _SkipRun(f"no '{key}' in results.jsonl")
    final = rec.get("final_val_loss")
    if not _finite(final):
        raise _SkipRun(f"final_val_loss is {final!r}")
    path = root / name / "metrics.jsonl"
    if not path.is_file():
        raise _SkipRun(f"missing {path.relative_to(root)}")
    # A resumed run re-logs the steps after its last checkpoint: keep the last record per step.
    by_step = {}
    for i, m in enumerate(_read_jsonl(path)):
        by_step[m.get("step", ("row", i))] = m
    evals = [m for m in by_step.values() if "val_loss" in m]
    if not evals:
        raise _SkipRun("no evaluation steps (no val_loss) in metrics.jsonl")
    cols = {}
    for key in ("val_loss", "flops_exact", "flops_6nd", "tokens"):
        vals = [m.get(key) for m in evals]
        bad = [m.get("step", "?") for m, v in zip(evals, vals) if not _finite(v)]
        if bad:
            raise _SkipRun(f"missing or non-finite {key} at step(s) {bad[:5]}")
        cols[key] = np.asarray(vals, dtype=float)
    cols["val_loss_se"] = np.array([m["val_loss_se"] if _finite(m.get("val_loss_se")) else np.nan
                                    for m in evals], dtype=float)
    order = np.argsort(cols["flops_exact"], kind="stable")
    cols = {k: v[order] for k, v in cols.items()}
    if np.any(cols["flops_exact"] <= 0) or np.any(cols["flops_6nd"] <= 0):
        # A step-0 evaluation has zero compute: no place on a log axis.
        keep = (cols["flops_exact"] > 0) & (cols["flops_6nd"] > 0)
        cols = {k: v[keep] for k, v in cols.items()}
        if not len(cols["val_loss"]):
            raise _SkipRun("all evaluations at zero compute")

    def opt(key, typ):
        v = rec.get(key)
        return typ(v) if _finite(v) else None

    return RunCurve(
        run=name,
        arm=rec["arm"],
        size=rec["size"],
        val_loss=cols["val_loss"],
        flops={"exact": cols["flops_exact"], "6nd": cols["flops_6nd"]},
        tokens=cols["tokens"],
        n_params_nonembed=opt("n_params_nonembed", int),
        n_params=opt("n_params", int),
        total_tokens=opt("tokens", int),
        budget_flops=opt("budget_flops", float),
        budget_convention=rec.get("convention"),
        final_val_loss=float(final),
        val_loss_se=cols["val_loss_se"] if np.isfinite(cols["val_loss_se"]).any() else None,
    )


def curves_from_csv(path: str | Path, convention: str = "exact") -> Sweep:
    """Load curves from a CSV with columns ``arm, run, compute_pflops_days | flops, val_loss``.

    One row per (run, evaluation); an optional ``size`` column names the model size
    (default: the run name), optional ``arm_display`` / ``arm_colour`` columns the arm's
    display name and colormap (as in ``results.jsonl``). Use it for curves digitised from a paper or exported from
    another codebase. ``convention`` records which FLOP count the compute column uses
    (the papers' charts use ``"6nd"``); plots and fits must then be asked for that
    convention. Rows with a missing or non-finite loss drop their whole run, with a warning.

    Raises:
        AnalysisError: missing file or columns, or no run left with finite values.
    """
    check_convention(convention)
    path = Path(path)
    if not path.is_file():
        raise AnalysisError(f"{path} does not exist; pass the path of a CSV file")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = [c.strip() for c in (reader.fieldnames or [])]
        rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    compute_col = "compute_pflops_days" if "compute_pflops_days" in fields else "flops" if "flops" in fields else None
    missing = [c for c in ("arm", "run", "val_loss") if c not in fields]
    if compute_col is None:
        missing.append("compute_pflops_days (or flops)")
    if missing:
        raise AnalysisError(f"{path} lacks column(s) {missing}; the header must hold arm, run, compute_pflops_days or flops, val_loss (it has {fields})")
    scale = FLOPS_PER_PFLOP_S_DAY if compute_col == "compute_pflops_days" else 1.0

    grouped: dict[str, list[tuple[float, float]]] = {}
    styled: list[dict] = []
    meta: dict[str, tuple[str, str]] = {}
    skipped: dict[str, str] = {}
    for i, row in enumerate(rows, 2):
        run, arm = (row.get("run") or "").strip(), (row.get("arm") or "").strip()
        if not run or not arm:
            raise AnalysisError(f"{path}:{i} has an empty arm or run; every row needs both")
        meta.setdefault(run, (arm, (row.get("size") or run).strip()))
        styled.append({**row, "arm": arm, "run": run})
        try:
            c, l = float(row[compute_col]) * scale, float(row["val_loss"])
        except (TypeError, ValueError):
            c, l = math.nan, math.nan
        if not (math.isfinite(c) and math.isfinite(l)) or c <= 0:
            skipped.setdefault(run, f"non-finite or missing value on line {i}")
        grouped.setdefault(run, []).append((c, l))
    _warn_skipped(skipped, path)
    runs = []
    for run, pts in grouped.items():
        if run in skipped:
            continue
        arr = np.array(sorted(pts))
        arm, size = meta[run]
        runs.append(RunCurve(run=run, arm=arm, size=size, val_loss=arr[:, 1], flops={convention: arr[:, 0]}))
    if not runs:
        raise AnalysisError(f"{path}: no run has finite compute and loss; check the values")
    display, colour = _arm_styles((r for r in styled if r["run"] not in skipped), path)
    return Sweep(runs=_sorted_runs(runs), source=path, skipped=skipped, arm_display=display,
                 arm_colour=colour)
