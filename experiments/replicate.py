"""The replication study in one command: sweep, evaluation at twice the length, report.

    python -m experiments.replicate --workdir=runs/replicate --out=docs/replication/report

Runs, in turn and as separate processes (each resumable; rerunning the command skips
what is done):

1. ``python -m experiments.sweep --config=configs/replicate.py --workdir=WORKDIR``
2. ``python -m experiments.evaluate --workdir=WORKDIR`` at ``EVAL_SEQ_LEN`` (2048)
   with 256-token position buckets and the trailing 256 tokens
3. ``python -m analysis.report --workdir=WORKDIR --out=OUT --convention=6nd``

``--sweep_flags`` passes a sweep override through (e.g.
``--sweep_flags=--config.seeds=0``). Stops at the first step that fails, with its exit
code; prints each step's command and wall time. The study's design: configs/replicate.py.
"""
import subprocess
import sys
import time

from absl import flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Sweep directory (runs, checkpoints, evaluations).")
flags.DEFINE_string("out", None, "Report directory (default: WORKDIR/report).")
flags.DEFINE_multi_string("sweep_flags", [], "Extra flags for the sweep step, e.g. "
                          "--sweep_flags=--config.seeds=0")
flags.mark_flag_as_required("workdir")


def steps(workdir: str, out: str, sweep_flags: list[str]) -> list[list[str]]:
    from configs.replicate import EVAL_SEQ_LEN
    py = [sys.executable, "-m"]
    return [
        py + ["experiments.sweep", "--config=configs/replicate.py", f"--workdir={workdir}",
              *sweep_flags],
        py + ["experiments.evaluate", f"--workdir={workdir}", f"--config.seq_len={EVAL_SEQ_LEN}",
              "--config.bucket_size=256", "--config.trailing=256"],
        py + ["analysis.report", f"--workdir={workdir}", f"--out={out}", "--convention=6nd"],
    ]


def main(argv):
    del argv
    common.setup_logging()
    out = FLAGS.out or f"{FLAGS.workdir.rstrip('/')}/report"
    start = time.perf_counter()
    for cmd in steps(FLAGS.workdir, out, FLAGS.sweep_flags):
        shown = " ".join(cmd[1:])
        print(f"[replicate] {shown}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"[replicate] exit {rc} after {time.perf_counter() - t0:.0f} s", flush=True)
        if rc != 0:
            sys.exit(rc)
    print(f"[replicate] done in {(time.perf_counter() - start) / 60:.1f} min; report in {out}",
          flush=True)


if __name__ == "__main__":
    common.run(main)
