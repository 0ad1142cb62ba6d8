"""Train one model.

    python -m experiments.train --config=configs/lm.py:small --workdir=/tmp/lm_small

Resumes automatically from the latest checkpoint in ``--workdir``.
"""
from absl import app, flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Run config file (configs/lm.py[:variant]).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (metrics, checkpoints, result).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    common.setup_logging()
    from moba_jax.train.loop import train
    with common.clean_exit():
        result = train(FLAGS.config, FLAGS.workdir)
    print(f"done: {result.steps} steps, {result.tokens:,} tokens, "
          f"final validation loss {result.final_val_loss:.4f} nats/token -> {result.run_dir}")


if __name__ == "__main__":
    app.run(main)
