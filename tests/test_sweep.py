"""The tiny compute-matched sweep end to end: table, figure, restart skips."""
import csv
import os

import pytest

from moba_jax import accounting
from configs.scaling import get_config
from moba_jax.sweep import plan_sweep
from tests.helpers import read_jsonl, run_cli


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    wd = tmp_path_factory.mktemp("tiny_sweep")
    proc = run_cli("experiments.sweep", "--config=configs/scaling.py:tiny", f"--workdir={wd}",
                   check=True)
    return wd, proc


def test_tiny_sweep_writes_table_and_figure(tiny_sweep):
    wd, proc = tiny_sweep
    plans = plan_sweep(get_config("tiny"))
    rows = read_jsonl(wd / "results.jsonl")
    assert sorted(r["run"] for r in rows) == sorted(p.name for p in plans)
    with open(wd / "results.csv") as f:
        assert len(list(csv.DictReader(f))) == len(plans)
    png = wd / "loss_vs_compute.png"
    assert png.exists() and png.stat().st_size > 10_000
    assert "L = " in proc.stdout and "C^" in proc.stdout
    assert "byte-unigram entropy" in proc.stdout
    for r, p in zip(sorted(rows, key=lambda r: r["run"]), sorted(plans, key=lambda p: p.name)):
        # Compute-matched: every run spends its budget up to less than one step.
        step_flops = r["flops_per_token_exact"] * (r["tokens"] / r["steps"])
        assert p.budget_flops - step_flops < r["flops_exact"] <= p.budget_flops
        metrics = read_jsonl(wd / r["run"] / "metrics.jsonl")
        vals = [m for m in metrics if "val_loss" in m]
        assert len(vals) >= 4, "each run needs a validation curve along training"
        assert vals[-1]["step"] == r["steps"]
        assert metrics[-1]["flops_exact"] == pytest.approx(r["flops_exact"])
        assert os.path.exists(wd / r["run"] / "config.json")


def test_restart_skips_finished_runs(tiny_sweep):
    wd, _ = tiny_sweep
    proc = run_cli("experiments.sweep", "--config=configs/scaling.py:tiny", f"--workdir={wd}",
                   check=True)
    assert proc.stdout.count("finished, skipped") == len(plan_sweep(get_config("tiny")))


def test_dry_run_prints_plan_without_training(tmp_path):
    proc = run_cli("experiments.sweep", "--config=configs/scaling.py", "--dry_run", check=True)
    for p in plan_sweep(get_config()):
        assert p.name in proc.stdout
    assert "PFLOP/s-days" in proc.stdout


def test_plan_is_compute_matched():
    cfg = get_config()
    for p in plan_sweep(cfg):
        per_step = p.flops_per_token["exact"] * p.tokens / p.steps
        assert p.steps * per_step <= p.budget_flops < (p.steps + 1) * per_step
        assert p.n_params_nonembed == accounting.non_embedding_params(p.config.model)
