"""Generate text from a trained run with cached incremental decoding.

    python -m experiments.generate --workdir=runs/scaling/full_s4_2.5e12 --prompt="def main("
    python -m experiments.generate --workdir=RUN --prompt="import " --temperature=0.8 --max_new_tokens=200

Full and MoBA layers keep a key/value cache (MoBA applies its block selection
against it), MLA its compressed latent cache, KDA its recurrent state.
"""
from absl import flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A run directory (with checkpoints).")
flags.DEFINE_string("prompt", "", "Text to continue (byte-tokenised, BOS prepended).")
flags.DEFINE_integer("max_new_tokens", 128, "Tokens to generate.")
flags.DEFINE_float("temperature", 0.0, "0 = greedy; > 0 samples.")
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    common.setup_logging()
    import jax.numpy as jnp
    import numpy as np
    from moba_jax.data import BOS_ID, EOS_ID, ByteTokenizer
    from moba_jax.decoding import generate
    from moba_jax.train.restore import load_run
    from moba_jax.checks import at_least
    with common.clean_exit():
        at_least("--max_new_tokens", FLAGS.max_new_tokens, 1, "generate at least one token",
                 integer=True)
        at_least("--temperature", FLAGS.temperature, 0, "give 0 (greedy) or a positive "
                 "sampling temperature, e.g. --temperature=0.8")
        run = load_run(FLAGS.workdir, step=FLAGS.step)
        tok = ByteTokenizer()
        prompt = np.concatenate([[BOS_ID], tok.encode(FLAGS.prompt)]).astype(np.int32)[None]
        out = generate(run.spec, run.params, jnp.asarray(prompt), FLAGS.max_new_tokens,
                       temperature=FLAGS.temperature, seed=FLAGS.seed, eos_id=EOS_ID)
        print(FLAGS.prompt + tok.decode(np.asarray(out[0])))


if __name__ == "__main__":
    common.run(main)
