"""Benchmark dense causal attention against MoBA and KDA (on CPU; on a GPU machine run
``python -m experiments.device_check``, which also times the trainer and the anchors).

    python -m experiments.benchmark --config=configs/bench_attention.py --workdir=/tmp/bench
    python -m experiments.benchmark --config=configs/bench_attention.py:smoke --workdir=/tmp/bs

Writes ``bench.json`` and ``bench.png`` into ``--workdir`` and prints a table; the work
is ``kernels/bench.py``'s (importable from a notebook).
"""
from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from kernels import bench

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Benchmark config, e.g. configs/bench_attention.py[:smoke].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for bench.json and bench.png.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.setup_logging()
    bench.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    common.run(main)
