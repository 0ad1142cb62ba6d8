"""Fixtures shared across test modules, and one compilation cache for the subprocesses."""
from __future__ import annotations

import os
import shutil
import tempfile

import jax  # noqa: F401  (imported first: this process keeps jax's default, uncached config)
import pytest

from tests.helpers import run_cli

_CACHE_VARS = ("JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS",
               "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES")


def pytest_configure(config):
    """The suite starts ~100 command-line subprocesses that compile the same tiny train and
    eval steps: a persistent XLA cache, fresh for each session, lets the later ones load
    them instead (a tiny one-run sweep: 8.8 s -> 5.1 s). Only subprocesses use it."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return                      # the caller chose a cache (or none) already
    config._moba_jax_cache = tempfile.mkdtemp(prefix="moba_jax_test_xla_cache_")
    os.environ.update({"JAX_COMPILATION_CACHE_DIR": config._moba_jax_cache,
                       "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                       "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "-1"})


def pytest_unconfigure(config):
    cache = getattr(config, "_moba_jax_cache", None)
    if cache:
        for v in _CACHE_VARS:
            os.environ.pop(v, None)
        shutil.rmtree(cache, ignore_errors=True)


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
