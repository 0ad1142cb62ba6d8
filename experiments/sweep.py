"""Run a compute-matched sweep.

    python -m experiments.sweep --config=configs/scaling.py --workdir=runs/scaling
    python -m experiments.sweep --config=configs/scaling.py:tiny --workdir=/tmp/tiny
    python -m experiments.sweep --config=configs/scaling.py --dry_run   # plan only

Finished runs in ``--workdir`` are skipped; unfinished ones resume.
"""
from absl import app, flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Sweep config (configs/scaling.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Sweep directory.")
flags.DEFINE_bool("dry_run", False, "Print each run's parameters, tokens, FLOPs and "
                  "PFLOP/s-days, then exit without training.")
flags.mark_flag_as_required("config")


def main(argv):
    del argv
    common.setup_logging()
    from moba_jax.sweep import SweepConfigError, run_sweep
    with common.clean_exit():
        if not FLAGS.dry_run and not FLAGS.workdir:
            raise SweepConfigError("--workdir is required unless --dry_run is given")
        run_sweep(FLAGS.config, FLAGS.workdir, dry_run=FLAGS.dry_run)


if __name__ == "__main__":
    app.run(main)
