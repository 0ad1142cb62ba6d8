"""Fixtures shared across test modules."""
from __future__ import annotations

import pytest

from tests.helpers import run_cli


@pytest.fixture(scope="session")
def tiny_sweep_dir(tmp_path_factory):
    """A finished ``configs/scaling.py:tiny`` sweep (2 arms x 2 sizes, ~25 s on 2 CPU cores).

    Read it, don't write into it: the report and notebook tests send their outputs elsewhere.
    """
    wd = tmp_path_factory.mktemp("tiny_sweep_shared")
    run_cli("experiments.sweep", "--config=configs/scaling.py:tiny", f"--workdir={wd}", check=True)
    return wd
