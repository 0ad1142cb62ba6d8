"""Compute-matched sweeps: plan runs from a sweep config, train them, collect results.

A sweep config (see ``configs/scaling.py``) holds a ``base`` run config and:

- ``arms``: comma-separated arm names, each defined in ``arm_defs.<name>`` as
  model-config overrides (``attention_pattern``, ``full_attention_last_n``,
  ``attention.<kind>.*``) plus optional ``train`` overrides;
- ``sizes``: comma-separated size names defined in ``size_defs.<name>`` (model
  shape fields plus an optional per-size ``lr``);
- ``budgets``: comma-separated FLOP budgets in ``budget_convention`` (one per
  size, paired in order, or every size x every budget with ``grid=True``).

Each run's tokens follow from its budget and its own FLOPs per token, so every
arm gets exactly the same compute at each point. The sweep directory receives
one folder per run, ``results.jsonl`` / ``results.csv`` (one row per finished
run) and ``loss_vs_compute.png``. Finished runs are skipped on restart;
unfinished ones resume from their checkpoints.

Many workers may share one sweep directory (:func:`run_sweep`): ``sweep.json``
pins the sweep's config, ``claims/<run>.claim`` marks the worker training a run
(heartbeats, stale-claim takeover: :mod:`moba_jax.claims`), and each run folder
holds ``attempts.jsonl`` (which worker trained it from which step) and, if it
raised, ``failed.json``. :func:`format_status` summarises the directory.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid

import ml_collections

from moba_jax import accounting, units
from moba_jax import claims
from moba_jax.budget import RunConfigError, run_length
from moba_jax.model import validate_model_config
from moba_jax.train import metrics as mx

log = logging.getLogger("moba_jax")

RESULT_FIELDS = ("run", "arm", "size", "status", "n_params_nonembed", "n_params", "steps", "tokens",
                 "budget_flops", "convention", "final_val_loss", "flops_per_token_exact",
                 "flops_per_token_6nd", "flops_per_token_compiled", "flops_exact", "flops_6nd",
                 "pflops_days_exact", "pflops_days_6nd", "unigram_entropy_nats")


class SweepConfigError(ValueError):
    """A sweep config that cannot be planned (message names the field and the fix)."""


@dataclasses.dataclass
class RunPlan:
    name: str
    arm: str
    size: str
    budget_flops: float
    config: ml_collections.ConfigDict
    steps: int
    tokens: int
    n_params_nonembed: int
    flops_per_token: dict

    def row(self) -> dict:
        return {"run": self.name, "arm": self.arm, "size": self.size,
                "n_params_nonembed": self.n_params_nonembed, "steps": self.steps,
                "tokens": self.tokens, "budget_flops": self.budget_flops,
                "pflops_days": units.to_pflops_days(self.budget_flops)}


def _names(field: str, value: str) -> list[str]:
    out = [v.strip() for v in str(value).split(",") if v.strip()]
    if not out:
        raise SweepConfigError(f"sweep.{field} is empty; list at least one, comma-separated")
    return out


def _merge(dst: ml_collections.ConfigDict, overrides: dict, where: str) -> None:
    for k, v in overrides.items():
        if k not in dst:
            raise SweepConfigError(f"{where}.{k}: no such field in the run config")
        if isinstance(v, dict):
            _merge(dst[k], v, f"{where}.{k}")
        else:
            dst[k] = v


def plan_sweep(cfg) -> list[RunPlan]:
    """Expands a sweep config into its runs (raises :class:`SweepConfigError`)."""
    arms = _names("arms", cfg.arms)
    sizes = _names("sizes", cfg.sizes)
    try:
        budgets = [float(b) for b in _names("budgets", cfg.budgets)]
    except ValueError:
        raise SweepConfigError(f"sweep.budgets={cfg.budgets!r}: give comma-separated numbers "
                               "such as '1e12,3e12'") from None
    if any(b <= 0 for b in budgets):
        raise SweepConfigError(f"sweep.budgets={cfg.budgets!r}: budgets must be positive")
    if cfg.get("grid", False):
        pairs = [(s, b) for s in sizes for b in budgets]
    else:
        if len(budgets) != len(sizes):
            raise SweepConfigError(
                f"sweep.budgets has {len(budgets)} entries but sweep.sizes has {len(sizes)}; "
                "give one budget per size or set --config.grid=True for every size x budget")
        pairs = list(zip(sizes, budgets))
    plans = []
    for arm in arms:
        if arm not in cfg.arm_defs:
            raise SweepConfigError(f"sweep.arms: unknown arm {arm!r}; defined arms: "
                                   f"{', '.join(sorted(cfg.arm_defs))}")
        for size, budget in pairs:
            if size not in cfg.size_defs:
                raise SweepConfigError(f"sweep.sizes: unknown size {size!r}; defined sizes: "
                                       f"{', '.join(sorted(cfg.size_defs))}")
            run_cfg = copy.deepcopy(cfg.base)
            size_def = dict(cfg.size_defs[size].to_dict())
            lr = size_def.pop("lr", None)
            _merge(run_cfg.model, size_def, f"size_defs.{size}")
            arm_def = dict(cfg.arm_defs[arm].to_dict())
            train_over = arm_def.pop("train", {})
            _merge(run_cfg.model, arm_def, f"arm_defs.{arm}")
            _merge(run_cfg.train, train_over, f"arm_defs.{arm}.train")
            if lr is not None:
                run_cfg.train.lr = lr
            run_cfg.train.update(budget_flops=budget, budget_convention=cfg.budget_convention,
                                 tokens=0, steps=0)
            validate_model_config(run_cfg.model)
            try:
                length = run_length(run_cfg.model, run_cfg.train)
            except RunConfigError as e:
                raise SweepConfigError(f"run {arm}/{size}: {e}") from None
            name = f"{arm}_{size}_{budget:.2g}".replace("+", "")
            plans.append(RunPlan(name, arm, size, budget, run_cfg, length.steps, length.tokens,
                                 accounting.non_embedding_params(run_cfg.model),
                                 length.flops_per_token))
    return plans


def sweep_fingerprint(cfg) -> str:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def format_plan(plans: list[RunPlan], convention: str) -> str:
    """The dry-run table: one row per run (training FLOPs per token in both conventions)."""
    w = max([len(p.name) for p in plans] + [4]) + 2
    head = (f"{'run':<{w}}{'N non-emb':>15}{'tokens':>18}{'steps':>9}{'6ND/token':>12}"
            f"{'exact/token':>13}{'budget FLOPs':>14}{'PFLOP/s-days':>14}")
    lines = [f"budgets in {convention} FLOPs", head, "-" * len(head)]
    for p in plans:
        lines.append(f"{p.name:<{w}}{p.n_params_nonembed:>15,}{p.tokens:>18,}{p.steps:>9}"
                     f"{p.flops_per_token['6nd']:>12.3g}{p.flops_per_token['exact']:>13.3g}"
                     f"{p.budget_flops:>14.3g}{units.to_pflops_days(p.budget_flops):>14.3g}")
    total = sum(p.budget_flops for p in plans)
    lines.append(f"total: {len(plans)} runs, {total:.3g} {convention} FLOPs = "
                 f"{units.to_pflops_days(total):.3g} PFLOP/s-days")
    return "\n".join(lines)


def collect_results(workdir: str, plans: list[RunPlan]) -> list[dict]:
    rows = []
    for p in plans:
        path = os.path.join(workdir, p.name, "result.json")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            res = json.load(f)
        row = {"run": p.name, "arm": p.arm, "size": p.size, "status": "done", **res}
        for c in ("exact", "6nd"):
            row[f"pflops_days_{c}"] = units.to_pflops_days(res[f"flops_{c}"])
        rows.append(row)
    return rows


def _write_atomic(path: str, write) -> None:
    """Writes ``path`` via a private temporary file (safe with concurrent writers)."""
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_results(workdir: str, rows: list[dict]) -> None:
    def jsonl(f):
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")

    def csv_rows(f):
        w = csv.DictWriter(f, fieldnames=RESULT_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)

    _write_atomic(os.path.join(workdir, "results.jsonl"), jsonl)
    _write_atomic(os.path.join(workdir, "results.csv"), csv_rows)


# --- the sweep directory's state ---------------------------------------------------

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
        tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "w") as f:
            json.dump({"fingerprint": fingerprint, "config": cfg.to_dict()}, f, indent=2,
                      sort_keys=True, default=str)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            os.remove(tmp)
    with open(path) as f:
        old = json.load(f)
    if old.get("fingerprint") != fingerprint:
        raise SweepConfigError(
            f"{workdir} belongs to a sweep with a different config (fingerprint "
            f"{old.get('fingerprint')} != {fingerprint}); use a fresh --workdir, or the "
            "exact --config and overrides of the workers already using it")


def _claims_dir(workdir: str) -> str:
    return os.path.join(workdir, "claims")


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, ValueError):
        return None


def _checkpoint_step(run_dir: str) -> int:
    d = os.path.join(run_dir, "checkpoints")
    steps = [int(n) for n in os.listdir(d) if n.isdigit()] if os.path.isdir(d) else []
    return max(steps, default=0)


def _last_logged_step(run_dir: str) -> int:
    try:
        with open(os.path.join(run_dir, "metrics.jsonl"), "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(f.tell() - 4096, 0))
            lines = [l for l in f.read().decode(errors="ignore").splitlines() if l.strip()]
        return int(json.loads(lines[-1])["step"]) if lines else 0
    except (OSError, ValueError, KeyError):
        return 0


def _record(run_dir: str, event: str, worker: str, **extra) -> None:
    """Appends one line to ``RUN_DIR/attempts.jsonl`` (who trained what, from which step)."""
    os.makedirs(run_dir, exist_ok=True)
    rec = {"event": event, "worker": worker, "time": time.time(), **extra}
    with open(os.path.join(run_dir, "attempts.jsonl"), "a") as f:
        f.write(json.dumps(rec, sort_keys=True) + "\n")


def run_states(workdir: str, plans: list[RunPlan], claim_timeout_s: float) -> list[dict]:
    """Each run's state: ``done``, ``running`` (fresh claim), ``failed`` or ``pending``."""
    out = []
    for p in plans:
        run_dir = os.path.join(workdir, p.name)
        st = {"plan": p, "state": "pending", "detail": ""}
        result = _read_json(os.path.join(run_dir, "result.json"))
        failed = _read_json(os.path.join(run_dir, "failed.json"))
        claim = claims.read_claim(claims.claim_path(_claims_dir(workdir), p.name))
        if result is not None:
            val = result.get("final_val_loss")
            st.update(state="done", detail=f"val loss {val:.4f}" if val is not None else "")
        elif claim is not None and not claims.is_stale(claim, claim_timeout_s):
            st.update(state="running", detail=f"step {_last_logged_step(run_dir)}/{p.steps} by "
                      f"{claim.get('owner')} (heartbeat {claim['age_s']:.0f}s ago)")
        elif failed is not None:
            st.update(state="failed", detail=str(failed.get("error", ""))[:200])
        else:
            parts = []
            ck = _checkpoint_step(run_dir)
            if ck:
                parts.append(f"resumes from step {ck}/{p.steps}")
            if claim is not None:
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
    for k in ("done", "running", "failed", "pending"):
        sel = [s["plan"].budget_flops for s in states if s["state"] == k]
        parts.append(f"{len(sel)} {k} ({sum(sel):.3g} FLOPs)")
    lines.append(f"{len(states)} runs: " + ", ".join(parts))
    return "\n".join(lines)


def run_sweep(cfg, workdir: str, *, dry_run: bool = False, echo=print,
              claim_timeout_s: float = 600.0, heartbeat_s: float = 30.0,
              worker_id: str | None = None, wait: bool = False,
              retry_failed: bool = False) -> list[dict]:
    """Plans the sweep and trains unclaimed runs as one of possibly many workers.

    Any number of workers (each one process, or one group of processes joined
    by ``jax.distributed``) may run the same sweep directory at once: a run is
    trained by the worker that claims it (see :mod:`moba_jax.claims`), and
    ``RUN_DIR/attempts.jsonl`` records which worker trained it from which step.
    A run that raises is recorded in ``RUN_DIR/failed.json`` and skipped by
    later workers unless ``retry_failed``. Each finished run rewrites the
    results table; once no run is pending or running, the figure and fitted
    laws are written too. With ``wait`` a worker that finds nothing to claim
    polls until the runs held by others finish (taking over any whose worker died).

    On SIGTERM the current run checkpoints, its claim is released and
    :class:`~moba_jax.train.loop.Preempted` is raised.
    """
    import jax

    from moba_jax import distributed
    from moba_jax.train.loop import Preempted, train  # heavy imports only when training

    plans = plan_sweep(cfg)
    main = jax.process_index() == 0
    say = echo if main else (lambda *_: None)
    say(format_plan(plans, cfg.budget_convention))
    if dry_run:
        return [p.row() for p in plans]
    os.makedirs(_claims_dir(workdir), exist_ok=True)
    check_sweep_dir(cfg, workdir)
    distributed.install_preemption_handler()
    worker = worker_id or claims.new_worker_id()
    if jax.process_count() > 1:
        say(f"worker {worker}: {jax.process_count()} processes, {jax.device_count()} devices")
    reported: set[str] = set()
    attempted: set[str] = set()

    def next_run() -> tuple[int, claims.Claim | None, bool]:
        """(index of a run now claimed or -1, its claim, whether other workers hold runs)."""
        busy = False
        for i, s in enumerate(run_states(workdir, plans, claim_timeout_s)):
            name = s["plan"].name
            if name in attempted:
                continue
            if s["state"] == "done" or (s["state"] == "failed" and not retry_failed):
                if name not in reported:
                    reported.add(name)
                    say(f"[{i + 1}/{len(plans)}] {name}: "
                        + ("finished, skipped" if s["state"] == "done"
                           else f"failed earlier, skipped ({s['detail']})"))
                continue
            if s["state"] == "running":
                busy = True
                continue
            c = claims.try_claim(_claims_dir(workdir), name, worker,
                                 timeout_s=claim_timeout_s, heartbeat_s=heartbeat_s)
            if c is None:
                busy = True
                continue
            if os.path.exists(os.path.join(workdir, name, "result.json")):
                c.release()   # finished between our look and our claim
                continue
            return i, c, busy
        return -1, None, busy

    while True:
        if distributed.preemption_requested():
            raise Preempted(workdir, -1, "SIGTERM: sweep worker stopped before its next run; "
                            "relaunch it to continue the sweep")
        i, claim, busy = next_run() if main else (-1, None, False)
        i = distributed.broadcast_from_main(i)
        busy = bool(distributed.broadcast_from_main(int(busy)))
        if i < 0:
            if wait and busy:
                time.sleep(min(heartbeat_s, 10.0))
                continue
            break
        p = plans[i]
        reported.add(p.name)
        attempted.add(p.name)   # once per worker session, even with retry_failed
        run_dir = os.path.join(workdir, p.name)
        tag = f"[{i + 1}/{len(plans)}] {p.name}"
        try:
            from_step = _checkpoint_step(run_dir)
            if main:
                _record(run_dir, "start", worker, from_step=from_step)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(run_dir, "failed.json"))
            say(f"{tag}: {p.n_params_nonembed:,} non-embedding params, {p.tokens:,} tokens, "
                f"{p.steps} steps" + (f", resuming from step {from_step}" if from_step else ""))
            try:
                res = train(p.config, run_dir)
            except Preempted as e:
                if main:
                    _record(run_dir, "preempted", worker, step=e.step)
                say(f"{tag}: preempted, checkpoint at step {e.step}; claim released")
                raise
            except Exception as e:  # a broken run must not stop the sweep
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                msg = f"{type(e).__name__}: {first}"[:500]
                log.exception("%s failed", p.name)
                if main:
                    mx.write_json_atomic(os.path.join(run_dir, "failed.json"),
                                         {"error": msg, "worker": worker, "time": time.time()})
                    _record(run_dir, "failed", worker, error=msg)
                say(f"{tag}: FAILED ({msg}); moving on")
                continue
            if main:
                _record(run_dir, "done", worker, step=res.steps)
                write_results(workdir, collect_results(workdir, plans))
            say(f"{tag}: final validation loss {res.final_val_loss:.4f}")
        finally:
            if claim is not None:
                claim.release()

    rows = collect_results(workdir, plans)
    if not main:
        return rows
    write_results(workdir, rows)
    states = run_states(workdir, plans, claim_timeout_s)
    left = [s["plan"].name for s in states if s["state"] in ("running", "pending")]
    failed = [s for s in states if s["state"] == "failed"]
    if left:
        echo(f"{len(left)} runs still running or pending ({', '.join(left)}); the worker that "
             "finishes the last run writes the figure; see --status")
    elif rows:
        summarize(workdir, rows, cfg.budget_convention, echo)
    if failed:
        echo(f"{len(failed)} runs failed: " + "; ".join(
            f"{s['plan'].name}: {s['detail']}" for s in failed)
             + " (fix the cause, then relaunch with --retry_failed)")
    return rows


def summarize(workdir: str, rows: list[dict], convention: str, echo=print) -> None:
    """Writes ``loss_vs_compute.png`` and prints each arm's fitted law."""
    from analysis import plots, results
    sweep = results.load_sweep(workdir)
    out = os.path.join(workdir, "loss_vs_compute.png")
    tmp_dir = os.path.join(workdir, f".figure.{uuid.uuid4().hex[:8]}")  # concurrent workers
    try:
        fig = plots.plot_loss_vs_compute(sweep, os.path.join(tmp_dir, "loss_vs_compute.png"),
                                         convention=convention)
        for ext in (".png", ".pdf"):
            src = os.path.join(tmp_dir, "loss_vs_compute" + ext)
            if os.path.exists(src):
                os.replace(src, os.path.join(workdir, "loss_vs_compute" + ext))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    echo(f"figure: {out}")
    echo(f"fitted laws on the lower envelope (C in PFLOP/s-days, {convention} FLOPs):")
    echo("  " + fig.summary().replace("\n", "\n  "))
    entropy = rows[0].get("unigram_entropy_nats") if rows else None
    if entropy is not None:
        best = min(rows, key=lambda r: r["final_val_loss"])
        echo(f"byte-unigram entropy of the corpus: {entropy:.4f} nats/token; best validation "
             f"loss: {best['final_val_loss']:.4f} ({best['run']})")
