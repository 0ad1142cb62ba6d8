"""The sweep directory's state, read from its files.

``sweep.json`` pins the sweep's config (:func:`check_sweep_dir`; a changed config
raises :class:`~moba_jax.sweep.plan.SweepChangedError`, which ``--retry_failed`` may
accept: :mod:`moba_jax.sweep.changes`); each run is
``done`` (``RUN_DIR/result.json``), ``running`` (a live claim in
``claims/<run>.claim``, see :mod:`moba_jax.sweep.claims`), ``dead`` (claimed by
a worker process on this host that no longer exists; the next worker takes it
over at once), ``failed`` (``RUN_DIR/failed.json``) or ``pending`` (:func:`run_states`);
``RUN_DIR/attempts.jsonl`` records which worker trained a run from which step
(:func:`record`). :func:`format_status` is the ``--status`` table.
"""
from __future__ import annotations

import json
import os
import time

from moba_jax import fileio, jsonfiles, units
from moba_jax.sweep import claims
from moba_jax.sweep.plan import (RunPlan, SweepChangedError, SweepConfigError, changed_fields,
                                 format_fields, pinned_part, sweep_fingerprint)


_SWEEP_JSON_FIX = ("fix it, or delete it and rerun with the sweep's exact --config and "
                   "overrides (it is written again from them)")


def check_sweep_dir(cfg, workdir: str, create: bool = True) -> None:
    """Records the sweep's fingerprint in ``sweep.json`` or checks it (race-free).

    The first worker links a complete file into place (``os.link`` fails if the
    name exists), so concurrent workers all compare against the same record.
    With ``create=False`` a directory without ``sweep.json`` passes unchanged.
    """
    path = os.path.join(workdir, "sweep.json")
    fingerprint = sweep_fingerprint(cfg)
    if not os.path.exists(path):
        if not create:
            return
        fileio.write_json(path, {"fingerprint": fingerprint, "config": cfg.to_dict()},
                          exclusive=True)
    old = jsonfiles.load(path, SweepConfigError, _SWEEP_JSON_FIX)
    if old.get("fingerprint") != fingerprint:
        fields = changed_fields(pinned_part(old.get("config", {})), pinned_part(cfg.to_dict()))
        raise SweepChangedError(
            f"{workdir} belongs to a sweep with a different config ("
            f"{format_fields(fields) or 'fingerprint ' + str(old.get('fingerprint'))}); "
            "--retry_failed accepts a change that alters only failed or unstarted runs; "
            "otherwise use a fresh --workdir, or the exact --config and overrides of the "
            "workers already using it", pinned=old)


def load_pinned_config(workdir: str):
    """The sweep config pinned in ``WORKDIR/sweep.json`` (a ``ConfigDict``), or None
    when the directory has no ``sweep.json``."""
    import ml_collections
    path = os.path.join(workdir, "sweep.json")
    old = jsonfiles.load(path, SweepConfigError, _SWEEP_JSON_FIX) if os.path.exists(path) else None
    if old is None or "config" not in old:
        return None
    cfg = ml_collections.ConfigDict(old["config"])
    if sweep_fingerprint(cfg) != old.get("fingerprint"):
        raise SweepConfigError(f"{workdir}/sweep.json does not reproduce its fingerprint; "
                               "pass the sweep's --config and overrides")
    return cfg


def claims_dir(workdir: str) -> str:
    return os.path.join(workdir, "claims")


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def checkpoint_step(run_dir: str) -> int:
    """The run's latest saved checkpoint step (0 when it has none)."""
    d = os.path.join(run_dir, "checkpoints")
    steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
    return max(steps, default=0)


def last_logged(run_dir: str) -> dict | None:
    """The last line of ``RUN_DIR/metrics.jsonl`` (None when there is none or it is partial)."""
    try:
        with open(os.path.join(run_dir, "metrics.jsonl"), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 4096, 0))
            lines = [l for l in f.read().decode(errors="ignore").splitlines() if l.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def last_logged_step(run_dir: str) -> int:
    """The step of the last line of ``RUN_DIR/metrics.jsonl`` (0 when there is none)."""
    try:
        return int((last_logged(run_dir) or {}).get("step", 0))
    except (TypeError, ValueError):
        return 0


def record(run_dir: str, event: str, worker: str, **extra) -> None:
    """Appends one line to ``RUN_DIR/attempts.jsonl`` (who trained what, from which step)."""
    os.makedirs(run_dir, exist_ok=True)
    rec = {"event": event, "worker": worker, "time": time.time(), **extra}
    with open(os.path.join(run_dir, "attempts.jsonl"), "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")


def run_states(workdir: str, plans: list[RunPlan], claim_timeout_s: float) -> list[dict]:
    """Each run's state: ``done``, ``running`` (live claim), ``dead`` (its worker
    process is gone), ``failed`` or ``pending`` (a claim from another host counts
    as stale after ``claim_timeout_s`` without heartbeat)."""
    out = []
    for p in plans:
        run_dir = os.path.join(workdir, p.name)
        st = {"plan": p, "state": "pending", "detail": ""}
        result = _read_json(os.path.join(run_dir, "result.json"))
        failed = _read_json(os.path.join(run_dir, "failed.json"))
        claim = claims.read_claim(claims.claim_path(claims_dir(workdir), p.name))
        if result is not None:
            val = result.get("final_val_loss")
            st.update(state="done", detail=f"val loss {val:.4f}" if val is not None else "")
        elif claim is not None and claims.claim_state(claim, claim_timeout_s) == "live":
            st.update(state="running", detail=f"step {last_logged_step(run_dir)}/{p.steps} by "
                      f"{claim.get('owner')} (heartbeat {claim['age_s']:.0f}s ago)")
        elif failed is not None:
            st.update(state="failed", detail=str(failed.get("error", ""))[:200])
        else:
            parts = []
            dead = claim is not None and claims.claim_state(claim, claim_timeout_s) == "dead"
            if dead:
                st["state"] = "dead"
                parts.append(f"worker {claim.get('owner')} (pid {claim.get('pid')} on this host) "
                             "is gone; the next worker takes the run over")
            ck = checkpoint_step(run_dir)
            if ck:
                parts.append(f"resumes from step {ck}/{p.steps}")
            if claim is not None and not dead:
                parts.append(f"stale claim of {claim.get('owner')} "
                             f"({claim['age_s']:.0f}s without heartbeat)")
            st["detail"] = "; ".join(parts)
        out.append(st)
    return out


def format_status(workdir: str, plans: list[RunPlan], convention: str,
                  claim_timeout_s: float) -> str:
    """The ``--status`` table: each run's state and compute."""
    states = run_states(workdir, plans, claim_timeout_s)
    w = max([len(p.name) for p in plans] + [4]) + 2
    head = f"{'run':<{w}}{'state':<9}{'budget FLOPs':>14}{'PFLOP/s-days':>14}  detail"
    lines = [f"sweep {workdir} (budgets in {convention} FLOPs)", head, "-" * len(head)]
    for s in states:
        p = s["plan"]
        lines.append(f"{p.name:<{w}}{s['state']:<9}{p.budget_flops:>14.3g}"
                     f"{units.to_pflops_days(p.budget_flops):>14.3g}  {s['detail']}".rstrip())
    parts = []
    for k in ("done", "running", "dead", "failed", "pending"):
        sel = [s["plan"].budget_flops for s in states if s["state"] == k]
        parts.append(f"{len(sel)} {k} ({sum(sel):.3g} FLOPs)")
    lines.append(f"{len(states)} runs: " + ", ".join(parts))
    return "\n".join(lines)
