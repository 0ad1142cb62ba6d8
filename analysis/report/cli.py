"""The report's command line, shared by ``python -m analysis.report`` and
``python -m experiments.report`` (same flags, same output, same exit codes)::

    python -m analysis.report --workdir=runs/scaling
    python -m analysis.report --workdir=runs/scaling --convention=6nd --baseline=full
    python -m analysis.report --workdir=runs/scaling --improved=moba --budgets=1e-9,1e-8
    python -m analysis.report --workdir=runs/scaling --bootstrap=500 --out=/tmp/scaling_report

Defining the flags imports absl only (no ``moba_jax``, no jax): the analysis layer reads
plain files. ``experiments.report`` passes its own handler of filesystem faults (the
project's one-line messages, exit 74); ``analysis.report`` uses :func:`plain_faults`.
"""
from __future__ import annotations

import contextlib
import errno
import sys

from absl import app, flags

from analysis.results import CONVENTIONS, AnalysisError

EXIT_CONFIG_ERROR = 2   # as experiments/common.py: a user error, one line says what to fix
EXIT_IO_ERROR = 74      # a directory that cannot be written (read-only, permissions, full)

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Sweep directory (holds results.jsonl).")
flags.DEFINE_enum("convention", "exact", list(CONVENTIONS),
                  "FLOP convention of every figure, law and budget (the law tables give both).")
flags.DEFINE_string("baseline", None, "Baseline arm of the multiplier (default: each arm's paper "
                    "baseline: MoBA arms vs full, Kimi Linear vs MLA, MLA and others vs full).")
flags.DEFINE_string("improved", None, "Compare only this arm with the baseline (default: every arm "
                    "with its paper's baseline).")
flags.DEFINE_list("budgets", None, "Baseline computes in PFLOP/s-days for the multiplier, e.g. 1e-9,1e-8.")
flags.DEFINE_integer("bootstrap", 200, "Bootstrap resamples for intervals (0: none).", lower_bound=0)
flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/report); e.g. a "
                    "writable folder for a sweep in a read-only directory.")
flags.DEFINE_string("evals", None, "Folder holding the runs' evaluations as <run>/eval/ when "
                    "experiments.evaluate wrote them elsewhere (its --out); default: --workdir.")
flags.mark_flag_as_required("workdir")


def _error(msg: str, code: int = EXIT_CONFIG_ERROR) -> None:
    print(f"error: {msg}", file=sys.stderr)
    sys.exit(code)


@contextlib.contextmanager
def plain_faults():
    """A read-only, permission-denied or full directory: one line, exit 74."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT):
            _error(f"cannot write {e.filename}: {e.strerror}; give a writable --out=DIR",
                   EXIT_IO_ERROR)
        raise


def _parse_budgets(values) -> list[float] | None:
    if not values:
        return None
    try:
        return [float(v) for v in values]
    except ValueError:
        raise AnalysisError(f"--budgets={','.join(values)}: give comma-separated numbers "
                            "(PFLOP/s-days) such as 1e-9,1e-8") from None


def main(argv, faults=plain_faults) -> None:
    """Writes the report of ``--workdir``; prints the two report paths on stdout."""
    if len(argv) > 1:
        _error(f"unexpected arguments {argv[1:]}")
    from analysis import report
    try:
        with faults():
            res = report.write_report(FLAGS.workdir, out=FLAGS.out, convention=FLAGS.convention,
                                      baseline=FLAGS.baseline, improved=FLAGS.improved,
                                      budgets=_parse_budgets(FLAGS.budgets),
                                      bootstrap=FLAGS.bootstrap, evals=FLAGS.evals)
    except AnalysisError as e:
        _error(" ".join(str(e).split()))
    print(res.markdown)
    print(res.html)


def run() -> None:
    """``python -m analysis.report``."""
    app.run(main)
