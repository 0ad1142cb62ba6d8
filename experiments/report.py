"""Write the report of a finished sweep: runs, compute, figures, fitted laws, multipliers.

    python -m experiments.report --workdir=runs/scaling
    python -m experiments.report --workdir=runs/scaling --convention=6nd --baseline=full
    python -m experiments.report --workdir=runs/scaling --improved=moba --budgets=1e-9,1e-8
    python -m experiments.report --workdir=runs/scaling --bootstrap=500 --out=/tmp/scaling_report

Writes ``OUT/report.md``, ``OUT/report.html`` (self-contained) and
``OUT/figures/*.{png,pdf}``, ``OUT`` defaulting to ``WORKDIR/report``, and prints the two
report paths; progress goes to stderr. About 5 s for a small sweep with 200 bootstrap
resamples, plus 10-20 s per arm with enough runs for the Chinchilla fit. All the work is
``analysis.report.write_report`` (callable from a notebook).

Exit codes: 0 done; 2 bad input (not a finished sweep, an unknown arm, bad budgets, arms
whose fitted losses never overlap), with a one-line ``error: ...`` message.
"""
import sys

from absl import flags

from analysis.results import CONVENTIONS, AnalysisError
from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Sweep directory (holds results.jsonl).")
flags.DEFINE_enum("convention", "exact", list(CONVENTIONS), "FLOP convention of figures and fits.")
flags.DEFINE_string("baseline", None, "Baseline arm of the multiplier (default: full, else mla, else the first).")
flags.DEFINE_string("improved", None, "Compare only this arm with the baseline (default: every other arm).")
flags.DEFINE_list("budgets", None, "Baseline computes in PFLOP/s-days for the multiplier, e.g. 1e-9,1e-8.")
flags.DEFINE_integer("bootstrap", 200, "Bootstrap resamples for intervals (0: none).", lower_bound=0)
flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/report); e.g. a "
                    "writable folder for a sweep in a read-only directory.")
flags.DEFINE_string("evals", None, "Folder holding the runs' evaluations as <run>/eval/ when "
                    "experiments.evaluate wrote them elsewhere (its --out); default: --workdir.")
flags.mark_flag_as_required("workdir")


def _error(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(common.EXIT_CONFIG_ERROR)


def _parse_budgets(values) -> list[float] | None:
    if not values:
        return None
    try:
        return [float(v) for v in values]
    except ValueError:
        raise AnalysisError(f"--budgets={','.join(values)}: give comma-separated numbers "
                            "(PFLOP/s-days) such as 1e-9,1e-8") from None


def main(argv):
    common.setup_logging()
    if len(argv) > 1:
        _error(f"unexpected arguments {argv[1:]}")
    from analysis import report
    try:
        with common.filesystem_faults():
            res = report.write_report(FLAGS.workdir, out=FLAGS.out, convention=FLAGS.convention,
                                      baseline=FLAGS.baseline, improved=FLAGS.improved,
                                      budgets=_parse_budgets(FLAGS.budgets),
                                      bootstrap=FLAGS.bootstrap, evals=FLAGS.evals)
    except AnalysisError as e:
        _error(" ".join(str(e).split()))
    print(res.markdown)
    print(res.html)


if __name__ == "__main__":
    common.run(main)
