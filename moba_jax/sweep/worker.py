"""Sweep workers: claim unfinished runs of a sweep directory and train them.

Many workers may share one sweep directory (:func:`run_sweep`): ``sweep.json``
pins the sweep's config, ``claims/<run>.claim`` marks the worker training a run
(heartbeats, stale-claim takeover: :mod:`moba_jax.sweep.claims`), and each run
folder holds ``attempts.jsonl`` (which worker trained it from which step) and,
if it raised, ``failed.json``. Finished runs are skipped on restart; unfinished
ones resume from their checkpoints. Each finished run rewrites ``results.jsonl``
/ ``results.csv``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
import traceback

from moba_jax import fileio
from moba_jax.sweep import changes, claims
from moba_jax.sweep.plan import SweepChangedError, format_plan, plan_sweep
from moba_jax.sweep.results import collect_results, write_results
from moba_jax.sweep.state import (check_sweep_dir, checkpoint_step, claims_dir, last_logged,
                                  record, run_states)

log = logging.getLogger("moba_jax")


@dataclasses.dataclass(frozen=True)
class SweepOutcome:
    """What a worker leaves behind: the results rows and every run's state.

    ``rows`` are the rows of ``results.jsonl`` (for a dry run, each plan's
    :meth:`~moba_jax.sweep.plan.RunPlan.row`); ``states`` the runs' states from
    :func:`~moba_jax.sweep.state.run_states` when the worker stopped (empty for a
    dry run and on processes other than process 0, ``main=False``, which
    neither print nor write).
    """

    rows: list[dict]
    states: list[dict]
    main: bool = True
    dry_run: bool = False

    @property
    def unfinished(self) -> list[str]:
        """Runs still running (claimed by other workers), pending or left by a dead worker."""
        return [s["plan"].name for s in self.states
                if s["state"] in ("running", "pending", "dead")]

    @property
    def running(self) -> list[str]:
        """Runs still owned by live workers (other than this one)."""
        return [s["plan"].name for s in self.states if s["state"] == "running"]

    @property
    def failed(self) -> list[dict]:
        """States of the runs recorded as failed."""
        return [s for s in self.states if s["state"] == "failed"]

    @property
    def complete(self) -> bool:
        """Whether this worker saw the sweep end (no run running or pending) and may
        write the sweep's figure."""
        return self.main and not self.dry_run and not self.unfinished


class _Progress:
    """Prints ``[i/N] run: step s/S, loss x`` every ``every_s`` seconds while a run
    trains without its own progress bar (``train.progress=False``), read from the
    run's ``metrics.jsonl`` in a daemon thread (the training loop is untouched)."""

    def __init__(self, tag: str, run_dir: str, steps: int, every_s: float, say):
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"progress:{tag}",
                                        args=(tag, run_dir, steps, every_s, say))
        self._thread.start()

    def _loop(self, tag, run_dir, steps, every_s, say) -> None:
        seen = None
        while not self._stop.wait(every_s):
            rec = last_logged(run_dir) or {}
            step, loss = rec.get("step"), rec.get("train_loss")
            if step is None or step == seen:
                continue
            seen = step
            say(f"{tag}: step {step}/{steps}" + (f", loss {loss:.4f}" if loss is not None else ""))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def run_sweep(cfg, workdir: str, *, dry_run: bool = False, echo=print,
              claim_timeout_s: float = 600.0, heartbeat_s: float = 30.0,
              worker_id: str | None = None, wait: bool = False,
              retry_failed: bool = False, progress_every_s: float = 10.0) -> SweepOutcome:
    """Plans the sweep and trains unclaimed runs as one of possibly many workers.

    Any number of workers (each one process, or one group of processes joined
    by ``jax.distributed``) may run the same sweep directory at once: a run is
    trained by the worker that claims it (see :mod:`moba_jax.sweep.claims`), and
    ``RUN_DIR/attempts.jsonl`` records which worker trained it from which step.
    A run that raises is recorded in ``RUN_DIR/failed.json`` (its cause and its
    traceback, which is not printed) and skipped by
    later workers unless ``retry_failed``, which also accepts a sweep config
    other than the one ``sweep.json`` pins if it alters only failed or unstarted
    runs (:func:`moba_jax.sweep.changes.accept`; a failed run whose training
    config changed restarts from scratch). Each finished run rewrites the
    results table. The returned :class:`SweepOutcome` says whether the sweep is
    complete; the caller then draws its figure (``experiments/summary.py``).
    With ``wait`` a worker that finds nothing to claim polls until the runs held
    by others finish (taking over any whose worker died). Runs trained with
    ``train.progress=False`` get a progress line every ``progress_every_s``
    seconds (0: none).

    On SIGTERM or Ctrl-C (SIGINT) the current run checkpoints, its claim is
    released and :class:`~moba_jax.train.loop.Preempted` is raised
    (:func:`moba_jax.distributed.stop_signal` says which signal).
    """
    import jax

    from moba_jax import distributed
    from moba_jax.train.loop import Preempted, config_fingerprint, train  # heavy imports

    plans = plan_sweep(cfg)
    main = jax.process_index() == 0
    say = echo if main else (lambda *_: None)
    say(format_plan(plans, cfg.budget_convention))
    if dry_run:
        return SweepOutcome([p.row() for p in plans], [], main=main, dry_run=True)
    os.makedirs(claims_dir(workdir), exist_ok=True)
    worker = worker_id or claims.new_worker_id()
    try:
        check_sweep_dir(cfg, workdir)
    except SweepChangedError as e:
        if not retry_failed:
            raise
        say(changes.accept(cfg, plans, workdir, e.pinned, claim_timeout_s, worker, write=main))
    distributed.install_preemption_handler()
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
            c = claims.try_claim(claims_dir(workdir), name, worker,
                                 timeout_s=claim_timeout_s, heartbeat_s=heartbeat_s)
            if c is None:
                busy = True
                continue
            if os.path.exists(os.path.join(workdir, name, "result.json")):
                c.release()   # finished between our look and our claim
                continue
            run_dir = os.path.join(workdir, name)
            try:
                changes.check_pin(cfg, workdir)   # still this worker's config?
                # trained with another config (accepted by --retry_failed): start afresh
                retired = changes.retire(run_dir, config_fingerprint(s["plan"].config))
            except BaseException:
                c.release()
                raise
            if retired is not None:
                record(run_dir, "retired", worker, moved_to=retired[0], files=retired[1],
                       reason="the sweep config changed this run; it restarts from scratch")
                say(f"[{i + 1}/{len(plans)}] {name}: config changed since it last trained; "
                    f"restarting from scratch (its old files moved to {name}/{retired[0]})")
            return i, c, busy
        return -1, None, busy

    while True:
        if distributed.preemption_requested():
            raise Preempted(workdir, -1, f"{distributed.stop_signal_name()}: sweep worker "
                            "stopped before its next run; relaunch it to continue the sweep")
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
            from_step = checkpoint_step(run_dir)
            if main:
                record(run_dir, "start", worker, from_step=from_step)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(os.path.join(run_dir, "failed.json"))
            say(f"{tag}: {p.n_params_nonembed:,} non-embedding params, {p.tokens:,} tokens, "
                f"{p.steps} steps" + (f", resuming from step {from_step}" if from_step else ""))
            bar = None
            if main and progress_every_s > 0 and not p.config.train.get("progress", True):
                bar = _Progress(tag, run_dir, p.steps, progress_every_s, say)
            try:
                res = train(p.config, run_dir)
            except Preempted as e:
                if main:
                    record(run_dir, "preempted", worker, step=e.step)
                say(f"{tag}: {distributed.stop_word()}, checkpoint at step {e.step}; "
                    "claim released")
                raise
            except Exception as e:  # a broken run must not stop the sweep
                if fileio.filesystem_fault(e) is not None:
                    raise   # the directory's fault, not the run's: stop, resume once fixed
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                msg = f"{type(e).__name__}: {first}"   # one line, whole
                if main:   # the traceback is kept with the run, not printed
                    fileio.write_json(os.path.join(run_dir, "failed.json"),
                                      {"error": msg, "worker": worker, "time": time.time(),
                                       "traceback": traceback.format_exc()})
                    record(run_dir, "failed", worker, error=msg)
                say(f"{tag}: FAILED ({msg}); moving on")
                continue
            finally:
                if bar is not None:
                    bar.stop()
            if main:
                record(run_dir, "done", worker, step=res.steps)
                write_results(workdir, collect_results(workdir, plans))
            say(f"{tag}: final validation loss {res.final_val_loss:.4f}")
        finally:
            if claim is not None:
                claim.release()

    rows = collect_results(workdir, plans)
    if not main:
        return SweepOutcome(rows, [], main=False)
    write_results(workdir, rows)
    return SweepOutcome(rows, run_states(workdir, plans, claim_timeout_s))
