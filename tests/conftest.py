"""Fixtures shared across test modules."""
from __future__ import annotations

import pytest

from tests.helpers import run_cli


@pytest.fixture(scope="session")
def tiny_sweep_run(tmp_path_factory):
    """A finished ``configs/scaling.py:tiny`` sweep (2 arms x 2 sizes, ~25 s on 2 CPU cores).

    Read it, don't write into it: the report and notebook tests send their outputs elsewhere.
    """
    wd = tmp_path_factory.mktemp("tiny_sweep_shared")
    proc = run_cli("experiments.sweep", "--config=configs/scaling.py:tiny", f"--workdir={wd}",
                   check=True)
    return wd, proc


@pytest.fixture(scope="session")
def tiny_sweep_dir(tiny_sweep_run):
    """The directory of :func:`tiny_sweep_run` (read it, don't write into it)."""
    return tiny_sweep_run[0]
