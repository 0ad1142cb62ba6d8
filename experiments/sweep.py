"""Run a compute-matched sweep, as one of any number of workers.

    python -m experiments.sweep --config=configs/scaling.py --workdir=runs/scaling
    python -m experiments.sweep --config=configs/scaling.py:tiny --workdir=/tmp/tiny
    python -m experiments.sweep --config=configs/scaling.py --dry_run   # plan only
    python -m experiments.sweep --config=configs/scaling.py --workdir=runs/scaling --status

Finished runs in ``--workdir`` are skipped; unfinished ones resume. Start the
same command several times (on one machine or on many sharing the directory)
and the workers split the runs between them: each run is claimed by one worker,
a dead worker's claim is taken over after ``--claim_timeout_s``. ``--status``
prints every run as done / running / failed / pending with its compute.

Exit codes: 0 the worker found nothing more to do, 2 bad input (one-line
message), 75 stopped by SIGTERM after checkpointing its current run (its claim
is released; relaunch to continue).
"""
from absl import app, flags
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
flags.DEFINE_float("claim_timeout_s", 600.0, "A run whose worker sent no heartbeat for this "
                   "long is taken over by another worker (each claim records its owner's "
                   "timeout, which is the one applied to it).")
flags.DEFINE_float("heartbeat_s", 30.0, "Seconds between a worker's heartbeats on its claim.")
flags.DEFINE_bool("wait", False, "When every remaining run is claimed by other workers, wait "
                  "for them (taking over runs whose worker dies) instead of exiting.")
flags.DEFINE_bool("retry_failed", False, "Train runs recorded as failed again.")
flags.DEFINE_string("worker_id", None, "Name of this worker in claims and attempts.jsonl "
                    "(default host:pid:random).")
flags.mark_flag_as_required("config")
common.define_distributed_flags()


def main(argv):
    del argv
    common.setup_logging()
    from moba_jax import sweep
    with common.clean_exit():
        if not FLAGS.dry_run and not FLAGS.workdir:
            raise sweep.SweepConfigError("--workdir is required unless --dry_run is given")
        if FLAGS.claim_timeout_s <= 2 * FLAGS.heartbeat_s:
            raise sweep.SweepConfigError(
                f"--claim_timeout_s={FLAGS.claim_timeout_s:g} must exceed twice "
                f"--heartbeat_s={FLAGS.heartbeat_s:g}, or live workers lose their runs")
        if FLAGS.status:
            plans = sweep.plan_sweep(FLAGS.config)
            sweep.check_sweep_dir(FLAGS.config, FLAGS.workdir, create=False)
            print(sweep.format_status(FLAGS.workdir, plans, FLAGS.config.budget_convention,
                                      FLAGS.claim_timeout_s))
            return
        if not FLAGS.dry_run:
            common.init_distributed()
        outcome = sweep.run_sweep(FLAGS.config, FLAGS.workdir, dry_run=FLAGS.dry_run,
                                  claim_timeout_s=FLAGS.claim_timeout_s,
                                  heartbeat_s=FLAGS.heartbeat_s, worker_id=FLAGS.worker_id,
                                  wait=FLAGS.wait, retry_failed=FLAGS.retry_failed)
        summary.finish(outcome, FLAGS.workdir, FLAGS.config.budget_convention)


if __name__ == "__main__":
    app.run(main)
