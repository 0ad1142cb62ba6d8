"""Run a compute-matched sweep, as one of any number of workers.

    python -m experiments.sweep --config=configs/scaling.py --workdir=runs/scaling
    python -m experiments.sweep --config=configs/scaling.py:tiny --workdir=/tmp/tiny
    python -m experiments.sweep --config=configs/scaling.py --dry_run   # plan only
    python -m experiments.sweep --config=configs/scaling.py --workdir=runs/scaling --status

Finished runs in ``--workdir`` are skipped; unfinished ones resume. Start the
same command several times (on one machine or on many sharing the directory)
and the workers split the runs between them: each run is claimed by one worker.
A claim whose worker process on this host is gone (killed, crashed) is taken
over at once; one from another host after ``--claim_timeout_s`` without
heartbeat. ``--status`` prints every run as done / running / dead / failed /
pending with its compute (``--config`` may be left out: ``sweep.json`` pins it).

``sweep.json`` pins the sweep's config: a worker with another config is refused
(exit 2, naming the differing fields). ``--retry_failed`` trains failed runs
again and accepts a changed config (the usual fix for a failed run) when it alters
only failed or unstarted runs, or adds runs; each planned run's config is compared
with the one its directory recorded. A failed run whose config changed restarts
from scratch: its old checkpoints, metrics and failure note move to
``RUN_DIR/retired/<n>/`` (``attempts.jsonl`` records it). A change that would alter
a finished or started run, or drop one from the plan, is refused (exit 2, naming
the runs and fields): revert it, use a fresh ``--workdir``, or delete those runs'
directories. Once accepted, ``sweep.json`` pins the new config (the previous
fingerprints are kept in its ``history``): later workers run it without
``--retry_failed``, and ``--status`` reads it. After a diverged run, e.g.::

    python -m experiments.sweep --config=configs/scaling.py:tiny --workdir=/tmp/tiny \\
        --config.size_defs.t1.lr=1e-3 --retry_failed

Exit codes:
  0    every planned run has finished;
  2    bad input (one-line message, nothing trained);
  3    every run has ended but some failed (each named with its cause; fix it and
       relaunch with ``--retry_failed``);
  4    runs are still running in other live workers, or pending (see ``--status``;
       relaunch, or pass ``--wait``, to finish them);
  75   stopped by SIGTERM after checkpointing its current run (its claim is
       released; relaunch to continue);
  130  stopped by Ctrl-C (SIGINT), the same way; a second Ctrl-C exits at once
       with 130 without that checkpoint (the next worker takes the claim over).
"""
import sys

from absl import flags
from ml_collections import config_flags

from experiments import common, summary

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Sweep config (configs/scaling.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Sweep directory.")
flags.DEFINE_bool("dry_run", False, "Print each run's parameters, tokens, FLOPs and "
                  "PFLOP/s-days, then exit without training.")
flags.DEFINE_bool("status", False, "Print each run of --workdir as done / running / failed / "
                  "pending with its compute, then exit without training.")
flags.DEFINE_float("claim_timeout_s", 600.0, "A run whose worker on another host sent no "
                   "heartbeat for this long is taken over by this worker (claims of dead "
                   "processes on this host are taken over at once).")
flags.DEFINE_float("heartbeat_s", None, "Seconds between a worker's heartbeats on its claim "
                   "(default: 30, or a quarter of --claim_timeout_s when that is shorter).")
flags.DEFINE_float("progress_every_s", 10.0, "Seconds between the progress lines of a run "
                   "trained without a progress bar (train.progress=False); 0: none.")
flags.DEFINE_bool("wait", False, "When every remaining run is claimed by other workers, wait "
                  "for them (taking over runs whose worker dies) instead of exiting.")
flags.DEFINE_bool("retry_failed", False, "Train runs recorded as failed again, accepting a "
                  "changed --config that alters only failed or unstarted runs (a failed run "
                  "whose config changed restarts from scratch).")
flags.DEFINE_string("worker_id", None, "Name of this worker in claims and attempts.jsonl "
                    "(default host:pid:random).")
common.define_distributed_flags()

MIN_HEARTBEAT_S = 0.1


def heartbeat_s(claim_timeout_s: float, heartbeat: float | None) -> float:
    """The heartbeat interval: ``heartbeat`` when given, else 30 s or a quarter of the
    claim timeout; a claim timeout must exceed twice it, or live workers lose runs."""
    from moba_jax import sweep
    beat = heartbeat if heartbeat is not None else min(30.0, claim_timeout_s / 4)
    if beat < MIN_HEARTBEAT_S:
        raise sweep.SweepConfigError(f"--heartbeat_s={beat:g} is below {MIN_HEARTBEAT_S:g}; "
                                     "raise it (or --claim_timeout_s)")
    if claim_timeout_s <= 2 * beat:
        raise sweep.SweepConfigError(
            f"--claim_timeout_s={claim_timeout_s:g} must exceed twice --heartbeat_s={beat:g}, "
            "or live workers lose their runs; raise it or lower --heartbeat_s")
    return beat


def main(argv):
    del argv
    common.setup_logging()
    from moba_jax import sweep
    from moba_jax.sweep.state import load_pinned_config
    with common.clean_exit():
        if not FLAGS.dry_run and not FLAGS.workdir:
            raise sweep.SweepConfigError("--workdir is required unless --dry_run is given")
        beat = heartbeat_s(FLAGS.claim_timeout_s, FLAGS.heartbeat_s)
        cfg = FLAGS.config
        if cfg is None and FLAGS.status:
            cfg = load_pinned_config(FLAGS.workdir)
        if cfg is None:
            raise sweep.SweepConfigError(
                "--config is required" + (f" ({FLAGS.workdir} has no sweep.json)"
                                          if FLAGS.status else "")
                + "; e.g. --config=configs/scaling.py:tiny")
        if FLAGS.status:
            plans = sweep.plan_sweep(cfg)
            sweep.check_sweep_dir(cfg, FLAGS.workdir, create=False)
            print(sweep.format_status(FLAGS.workdir, plans, cfg.budget_convention,
                                      FLAGS.claim_timeout_s))
            return
        if not FLAGS.dry_run:
            common.init_distributed()
        outcome = sweep.run_sweep(cfg, FLAGS.workdir, dry_run=FLAGS.dry_run,
                                  claim_timeout_s=FLAGS.claim_timeout_s, heartbeat_s=beat,
                                  worker_id=FLAGS.worker_id, wait=FLAGS.wait,
                                  retry_failed=FLAGS.retry_failed,
                                  progress_every_s=FLAGS.progress_every_s)
        code = summary.finish(outcome, FLAGS.workdir, cfg.budget_convention)
    sys.exit(code)


if __name__ == "__main__":
    common.run(main)
