"""Write the report of a finished sweep: runs, compute, figures, fitted laws, multipliers.

    python -m experiments.report --workdir=runs/scaling
    python -m experiments.report --workdir=runs/scaling --convention=6nd --baseline=full
    python -m experiments.report --workdir=runs/scaling --improved=moba --budgets=1e-9,1e-8
    python -m experiments.report --workdir=runs/scaling --bootstrap=500 --out=/tmp/scaling_report

Writes ``OUT/report.md``, ``OUT/report.html`` (self-contained) and
``OUT/figures/*.{png,pdf}``, ``OUT`` defaulting to ``WORKDIR/report``, and prints the two
report paths; progress goes to stderr. About 5 s for a small sweep with 200 bootstrap
resamples, plus 10-20 s per arm with enough runs for the Chinchilla fit. All the work is
``analysis.report.write_report`` (callable from a notebook); the flags live in
``analysis.report.cli``, which ``python -m analysis.report`` runs the same way (without
this entry point's logging setup and filesystem-fault messages).

Exit codes: 0 done; 2 bad input (not a finished sweep, an unknown arm, bad budgets, arms
whose fitted losses never overlap), with a one-line ``error: ...`` message.
"""
from analysis.report import cli
from experiments import common


def main(argv):
    common.setup_logging()
    cli.main(argv, faults=common.filesystem_faults)


if __name__ == "__main__":
    common.run(main)
