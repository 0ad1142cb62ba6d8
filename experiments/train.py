"""Train one model.

    python -m experiments.train --config=configs/lm.py:small --workdir=/tmp/lm_small

Resumes automatically from the latest checkpoint in ``--workdir``. Several
processes (one per host) run the same command; see docs/scaling_out.md::

    python -m experiments.train --config=configs/lm.py:tiny --workdir=/shared/run \\
        --coordinator_address=10.0.0.1:12345 --num_processes=2 --process_id=0   # and =1

Exit codes: 0 done, 2 bad input (one-line message), 3 diverged, 75 preempted
by SIGTERM after saving a checkpoint (run the same command again to resume).
"""
from absl import flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Run config file (configs/lm.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints, result).")
flags.mark_flags_as_required(["config", "workdir"])
common.define_distributed_flags()


def main(argv):
    del argv
    common.setup_logging()
    with common.clean_exit():
        common.init_distributed()
        from moba_jax.train.loop import train
        result = train(FLAGS.config, FLAGS.workdir)
    import jax
    if jax.process_index() == 0:
        print(f"done: {result.steps} steps, {result.tokens:,} tokens, "
              f"final validation loss {result.final_val_loss:.4f} nats/token -> {result.run_dir}")


if __name__ == "__main__":
    common.run(main)
