"""Evaluate saved checkpoints: position-bucketed and trailing validation losses.

    python -m experiments.evaluate --workdir=runs/scaling/full_s4_2.5e12
    python -m experiments.evaluate --workdir=runs/scaling            # every finished run
    python -m experiments.evaluate --workdir=RUN --step=100 --config.seq_len=1024 \\
        --config.bucket_size=128 --config.trailing=128

Restores onto the current devices whatever mesh the run was trained on, and
writes ``RUN/eval/step_XXXXXXXX_lenL_bB_tT_<hash>.{json,png}``: one file per step and
settings (length, bucket size, trailing size; the hash covers max_docs and the probes),
so evaluations with different settings coexist. Runs already evaluated with the same
settings are skipped. Prints one line per run, then one line per retrieval probe.
``--out=DIR`` writes the evaluations under DIR instead (runs in a read-only
directory); ``python -m experiments.report --evals=DIR`` reads them from there.
"""
import os

from absl import flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "A run directory or a sweep directory.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
flags.DEFINE_bool("overwrite", False, "Re-evaluate even if results exist.")
flags.DEFINE_string("out", None, "Write evaluations under this folder instead of the runs' "
                    "own (OUT/<run>/eval/ for a sweep, OUT/eval/ for a run), e.g. for runs in "
                    "a read-only directory; the report reads them with --evals=OUT.")
flags.mark_flag_as_required("workdir")


def _config():
    from moba_jax.evaluation import default_eval_config
    return default_eval_config()


config_flags.DEFINE_config_dict("config", _config(), "Evaluation settings (see "
                                "moba_jax/evaluation.py::default_eval_config).")


def main(argv):
    del argv
    common.setup_logging()
    from moba_jax.evaluation import evaluate_run, find_runs, probe_lines
    from moba_jax.validation import check_eval_request
    with common.clean_exit():
        check_eval_request(FLAGS.config)
        runs = find_runs(FLAGS.workdir)
        single = runs == [FLAGS.workdir]
        for i, run_dir in enumerate(runs):
            out = None
            if FLAGS.out:
                out = FLAGS.out if single else os.path.join(FLAGS.out, os.path.basename(run_dir))
            res = evaluate_run(run_dir, FLAGS.step, FLAGS.config, progress=True,
                               overwrite=FLAGS.overwrite, out_dir=out)
            buckets = " ".join(f"{b['label']}:{b['loss']:.3f}" for b in res["buckets"]
                               if b["loss"] is not None)
            trail = res["trailing"]["loss"]
            print(f"[{i + 1}/{len(runs)}] {os.path.basename(run_dir)} step {res['step']}: "
                  f"overall {res['overall']['loss']:.4f} | {buckets} | trailing "
                  f"{'n/a' if trail is None else f'{trail:.4f}'} ({res['trailing']['sequences']} seqs)")
            for line in probe_lines(res):
                print(f"    {os.path.basename(run_dir)} {line}")


if __name__ == "__main__":
    common.run(main)
