"""Training throughput (tokens/s, MFU) of a sweep's runs, without training them.

    python -m experiments.throughput --config=configs/replicate.py --sizes=r3
    python -m experiments.throughput --config=configs/scaling.py --sizes=s4 --steps=20

Plans the sweep (``--sizes`` and ``--arms`` pick runs; one seed each), times each
run's train step (``moba_jax/train/throughput.py``: the trainer's jitted step on
synthetic batches, median of ``--steps`` after 2 warm-up steps) and prints one row
per run: non-embedding parameters, step time, tokens/s, compiled GFLOP/s and MFU
against the device's peak (on CPU: a float32 matmul measured in the same process,
named in the footer). ``--out=FILE`` also writes the rows as JSON.
Run it on a quiet machine: other processes on the same cores lower every number.
"""
import json

from absl import flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A sweep config, e.g. configs/replicate.py.")
flags.DEFINE_string("sizes", "", "Comma-separated sizes to time (default: all).")
flags.DEFINE_string("arms", "", "Comma-separated arms to time (default: the sweep's).")
flags.DEFINE_integer("steps", 10, "Timed steps per run (after 2 warm-up steps).")
flags.DEFINE_string("out", None, "Also write the rows as JSON to this file.")
flags.mark_flag_as_required("config")


def main(argv):
    del argv
    common.setup_logging()
    from moba_jax.sweep.plan import SweepConfigError, plan_sweep
    from moba_jax.train import throughput
    with common.clean_exit():
        cfg = FLAGS.config
        if FLAGS.arms:
            cfg.arms = FLAGS.arms
        plans = plan_sweep(cfg)
        sizes = [s for s in FLAGS.sizes.split(",") if s] or sorted({p.size for p in plans})
        unknown = sorted(set(sizes) - {p.size for p in plans})
        if unknown:
            raise SweepConfigError(f"--sizes: {', '.join(unknown)} not in the sweep's sizes "
                                    f"({cfg.sizes}); pick from those")
        chosen, seen = [], set()
        for p in plans:
            if p.size in sizes and (p.arm, p.size) not in seen:
                seen.add((p.arm, p.size))
                chosen.append(p)
        rows = []
        for i, p in enumerate(chosen, 1):
            print(f"[{i}/{len(chosen)}] timing {p.arm}/{p.size} ...", flush=True)
            rows.append((f"{p.arm}/{p.size}", throughput.measure(p.config, steps=FLAGS.steps)))
        print(throughput.format_table(rows))
        print(f"peak: {rows[0][1].peak_source}" if rows else "no runs")
        if FLAGS.out:
            from moba_jax import fileio
            fileio.write_json(FLAGS.out, {name: r.row() for name, r in rows})


if __name__ == "__main__":
    common.run(main)
