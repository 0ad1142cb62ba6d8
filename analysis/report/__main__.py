"""``python -m analysis.report --workdir=DIR``: the report CLI (:mod:`analysis.report.cli`)."""
from analysis.report import cli

if __name__ == "__main__":
    cli.run()
