"""Compute-matched sweeps: plan runs from a sweep config, train them, collect results.

``plan`` expands a sweep config into runs; ``worker`` claims and trains them
(``claims`` holds the claim files); ``state`` reads the sweep directory;
``results`` writes ``results.jsonl`` / ``results.csv``. This module only
re-exports the names the entry points and tests use.
"""
from moba_jax.sweep.plan import SweepConfigError, plan_sweep
from moba_jax.sweep.state import check_sweep_dir, format_status
from moba_jax.sweep.worker import run_sweep

__all__ = ["SweepConfigError", "check_sweep_dir", "format_status", "plan_sweep", "run_sweep"]
