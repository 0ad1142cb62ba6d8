"""A changed sweep config on a sweep directory that already holds runs.

``sweep.json`` pins the config a sweep directory was started with
(:func:`moba_jax.sweep.state.check_sweep_dir`). A worker run with
``--retry_failed`` accepts a different config when it alters only runs that
left nothing worth keeping (:func:`accept`), judged run by run:

- each planned run's own resolved config (:attr:`~moba_jax.sweep.plan.RunPlan.config`)
  is compared with the one its directory recorded when it trained
  (``RUN_DIR/config.json``), less the logging fields;
- a run that finished (``result.json``) or started (a live claim, a checkpoint or
  logged metrics) blocks the change if its config would differ, and so does one
  that is no longer planned (an arm, size or budget removed): the error names
  each with its fields, and the ways out;
- failed and unstarted runs may change, and runs may be added (new arms, sizes or
  budgets alter no run that has trained).

A failed run whose training config changed cannot resume from its checkpoints:
when a worker next claims it, :func:`retire` moves its old files to
``RUN_DIR/retired/<n>/`` (``attempts.jsonl`` records it) and it restarts from
scratch. Once accepted, ``sweep.json`` pins the new config and lists the
previous fingerprints in ``history``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time

from moba_jax import fileio
from moba_jax.sweep import claims
from moba_jax.sweep.plan import (RunPlan, SweepConfigError, changed_fields, format_fields,
                                 origin_field, pinned_part, sweep_fingerprint)
from moba_jax.sweep.state import checkpoint_step, claims_dir, last_logged_step
from moba_jax.train.metrics import LOGGING_FIELDS

RETIRED = "retired"
# What training leaves in RUN_DIR (besides attempts.jsonl, which stays): a retired
# attempt's copies move to RUN_DIR/retired/<n>/.
RUN_FILES = ("checkpoints", "metrics.jsonl", "config.json", "failed.json", "tb")
# States whose runs a config change must not alter.
KEPT = ("done", "running", "started")


@dataclasses.dataclass
class RunChange:
    """One run's part in a config change.

    ``state``: ``done``, ``running`` (live claim), ``started`` (a checkpoint or logged
    metrics), ``failed`` or ``unstarted``; ``fields``: ``(sweep field, old, new)`` of
    what changes in its config (empty: unchanged); ``unknown``: it has trained but
    recorded no config; ``restart``: its training config changed, so it cannot
    resume; ``planned``: False for a run the new config no longer plans.
    """

    run: str
    state: str
    fields: list = dataclasses.field(default_factory=list)
    unknown: bool = False
    restart: bool = False
    planned: bool = True

    @property
    def changed(self) -> bool:
        return bool(self.fields) or self.unknown or not self.planned

    @property
    def blocks(self) -> bool:
        return self.changed and self.state in KEPT

    def describe(self) -> str:
        what = (format_fields(self.fields, limit=2) if self.fields else
                "no longer planned" if not self.planned else "no readable config.json")
        return f"{self.run} ({self.state}; {what})"


def _read(path: str) -> dict | None:
    """A JSON object file, or None when it is missing or unreadable (a run that trained
    without a readable ``config.json`` counts as changed: nothing says otherwise)."""
    try:
        with open(path) as f:
            out = json.load(f)
        return out if isinstance(out, dict) else None
    except (OSError, ValueError):
        return None


def run_part(config: dict) -> dict:
    """A run config (``ConfigDict.to_dict()`` or ``config.json``'s ``config``),
    JSON-normalised, less its logging fields (which change no result)."""
    d = json.loads(json.dumps(config, default=str))
    for k in LOGGING_FIELDS:
        d.get("train", {}).pop(k, None)
    return d


def run_state(workdir: str, run: str, claim_timeout_s: float) -> str:
    """``done``, ``running``, ``failed``, ``started`` or ``unstarted`` (see :class:`RunChange`)."""
    run_dir = os.path.join(workdir, run)
    if os.path.exists(os.path.join(run_dir, "result.json")):
        return "done"
    claim = claims.read_claim(claims.claim_path(claims_dir(workdir), run))
    if claim is not None and claims.claim_state(claim, claim_timeout_s) == "live":
        return "running"
    if os.path.exists(os.path.join(run_dir, "failed.json")):
        return "failed"
    if checkpoint_step(run_dir) or last_logged_step(run_dir):
        return "started"
    return "unstarted"


def run_changes(cfg, plans: list[RunPlan], workdir: str,
                claim_timeout_s: float) -> list[RunChange]:
    """What running ``cfg`` (planned as ``plans``) in ``workdir`` would change, run by run:
    every planned run, then every run directory (one with ``attempts.jsonl``) it no
    longer plans."""
    from moba_jax.train.loop import config_fingerprint   # imports jax
    out = []
    for p in plans:
        run_dir = os.path.join(workdir, p.name)
        state = run_state(workdir, p.name, claim_timeout_s)
        recorded = _read(os.path.join(run_dir, "config.json")) or {}
        if not isinstance(recorded.get("config"), dict):
            out.append(RunChange(p.name, state, unknown=state in KEPT))
            continue
        fields = [(origin_field(cfg, p.arm, p.size, f), a, b) for f, a, b in
                  changed_fields(run_part(recorded["config"]), run_part(p.config.to_dict()))]
        out.append(RunChange(p.name, state, fields,
                             restart=recorded.get("fingerprint") != config_fingerprint(p.config)))
    planned = {p.name for p in plans}
    for name in sorted(os.listdir(workdir)):
        if name not in planned and os.path.isfile(os.path.join(workdir, name, "attempts.jsonl")):
            out.append(RunChange(name, run_state(workdir, name, claim_timeout_s), planned=False))
    return out


def _names(changes: list[RunChange], limit: int = 3) -> str:
    text = ", ".join(c.run for c in changes[:limit])
    return text + (f" ... and {len(changes) - limit} more" if len(changes) > limit else "")


def _refusal(workdir: str, blocking: list[RunChange]) -> SweepConfigError:
    shown = ", ".join(c.describe() for c in blocking[:3])
    more = f" ... and {len(blocking) - 3} more runs" if len(blocking) > 3 else ""
    return SweepConfigError(
        f"--retry_failed accepts a config change only where it alters failed or unstarted "
        f"runs, but in {workdir} it alters {shown}{more}; revert the change, use a fresh "
        "--workdir, or delete those runs' directories (planned ones then train afresh with "
        "the new config)")


def accept(cfg, plans: list[RunPlan], workdir: str, pinned: dict, claim_timeout_s: float,
           worker: str, write: bool = True) -> str:
    """Accepts ``cfg`` for ``workdir`` (whose ``sweep.json`` record is ``pinned``) when it
    alters no finished or started run, re-pinning ``sweep.json`` unless ``write`` is
    False; returns the line saying what changed. Raises :class:`SweepConfigError`
    naming the runs it would alter otherwise.

    A worker of the old config may claim a run while this one re-pins: so the runs
    are checked again after the re-pin (which is undone if one now blocks), and
    workers check the pin after each claim (:func:`check_pin`).
    """
    changes = run_changes(cfg, plans, workdir, claim_timeout_s)
    if any(c.blocks for c in changes):
        raise _refusal(workdir, [c for c in changes if c.blocks])
    sweep_fields = changed_fields(pinned_part(pinned.get("config", {})), pinned_part(cfg.to_dict()))
    if write and _repin(cfg, workdir, pinned, worker, [f for f, _, _ in sweep_fields]):
        late = [c for c in run_changes(cfg, plans, workdir, claim_timeout_s) if c.blocks]
        if late:
            _write_pin(workdir, pinned)
            raise _refusal(workdir, late)
    parts = [f"{workdir}/sweep.json now pins the changed config ("
             f"{format_fields(sweep_fields) or 'fingerprint ' + sweep_fingerprint(cfg)}; "
             f"the previous one, {pinned.get('fingerprint')}, is kept in its history)"]
    restart = [c for c in changes if c.planned and c.changed and c.restart and c.state == "failed"]
    if restart:
        parts.append(f"failed runs to restart from scratch: {_names(restart)} (their old "
                     f"files move to RUN_DIR/{RETIRED}/<n>/)")
    resume = [c for c in changes
              if c.planned and c.changed and not c.restart and c.state == "failed"]
    if resume:
        parts.append(f"failed runs to resume (training config unchanged): {_names(resume)}")
    dropped = [c for c in changes if not c.planned]
    if dropped:
        parts.append(f"runs no longer planned (left on disk, out of the results): "
                     f"{_names(dropped)}")
    return "; ".join(parts)


def _write_pin(workdir: str, record: dict) -> None:
    fileio.write_json(os.path.join(workdir, "sweep.json"), record)


def _repin(cfg, workdir: str, pinned: dict, worker: str, fields: list[str]) -> bool:
    """Rewrites ``sweep.json`` for ``cfg``, appending the previous fingerprint to ``history``;
    False when another worker has just done the same."""
    path = os.path.join(workdir, "sweep.json")
    fingerprint = sweep_fingerprint(cfg)
    now = _read(path) or {}
    if now.get("fingerprint") == fingerprint:
        return False
    if now.get("fingerprint") != pinned.get("fingerprint"):
        raise SweepConfigError(f"{path} changed while this worker read it (another worker "
                               "accepted a different config); relaunch")
    history = list(pinned.get("history", [])) + [
        {"fingerprint": pinned.get("fingerprint"), "replaced_at": time.time(), "by": worker,
         "changed": fields}]
    _write_pin(workdir, {"fingerprint": fingerprint, "config": cfg.to_dict(), "history": history})
    return True


def check_pin(cfg, workdir: str) -> None:
    """Raises :class:`SweepConfigError` when ``sweep.json`` no longer pins ``cfg`` (a worker
    with ``--retry_failed`` accepted another config since this worker started)."""
    now = (_read(os.path.join(workdir, "sweep.json")) or {}).get("fingerprint")
    if now != sweep_fingerprint(cfg):
        raise SweepConfigError(
            f"{workdir}/sweep.json now pins another config (fingerprint {now}; a worker with "
            "--retry_failed accepted a change while this one ran); this worker stops: "
            "relaunch it with the sweep's new --config and overrides")


def retire(run_dir: str, fingerprint: str) -> tuple[str, list[str]] | None:
    """Moves the files of an attempt trained with another config (``config.json``'s
    fingerprint is not ``fingerprint``) to ``RUN_DIR/retired/<n>/``, so the run restarts
    from scratch; returns (that folder relative to ``run_dir``, the names moved), or
    None when the run's recorded config matches or it has none."""
    recorded = (_read(os.path.join(run_dir, "config.json")) or {}).get("fingerprint")
    if recorded is None or recorded == fingerprint:
        return None
    n = 1
    while os.path.exists(os.path.join(run_dir, RETIRED, str(n))):
        n += 1
    dest = os.path.join(RETIRED, str(n))
    os.makedirs(os.path.join(run_dir, dest))
    moved = [name for name in RUN_FILES if os.path.lexists(os.path.join(run_dir, name))]
    for name in moved:
        os.rename(os.path.join(run_dir, name), os.path.join(run_dir, dest, name))
    return dest, moved
