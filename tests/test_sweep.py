"""The tiny compute-matched sweep end to end: table, figure, restart skips."""
import csv
import os
import shutil

import pytest

from moba_jax import accounting
from configs.scaling import get_config
from moba_jax.sweep import plan_sweep
from tests.helpers import read_jsonl, run_cli


@pytest.fixture(scope="module")
def tiny_sweep(tiny_sweep_run):
    """The session's finished tiny sweep (conftest.py) and its stdout; read only."""
    return tiny_sweep_run


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


def test_restart_skips_finished_runs(tiny_sweep, tmp_path):
    wd = tmp_path / "sweep"
    shutil.copytree(tiny_sweep[0], wd)      # the shared sweep stays untouched
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
        assert p.n_params_activated == p.n_params_nonembed      # dense: every parameter is used



def test_size_defs_train_overrides():
    """A size may set train fields (the papers' per-size lr and batch); they win over the
    arm's, ``lr`` is short for ``train.lr``, and a bad value is named by its size field."""
    from moba_jax.sweep.plan import SweepConfigError
    cfg = get_config("tiny")
    cfg.arm_defs.full.train = dict(lr=1e-2, global_batch=6)
    cfg.size_defs.t1.train = dict(global_batch=2)
    cfg.size_defs.t2.train = dict(lr=7e-4)
    del cfg.size_defs.t2["lr"]
    by = {(p.arm, p.size): p.config.train for p in plan_sweep(cfg)}
    assert (by["full", "t1"].global_batch, by["full", "t1"].lr) == (2, 5e-3)   # size lr wins
    assert (by["full", "t2"].global_batch, by["full", "t2"].lr) == (6, 7e-4)
    assert (by["moba", "t1"].global_batch, by["moba", "t2"].global_batch) == (2, 4)
    cfg.size_defs.t2.lr = 1e-3
    with pytest.raises(SweepConfigError, match="size_defs.t2: lr and train.lr"):
        plan_sweep(cfg)
    cfg = get_config("tiny")
    cfg.size_defs.t1.train = dict(global_batch=0)
    with pytest.raises(ValueError, match="size_defs.t1.train.global_batch"):
        plan_sweep(cfg)
    cfg.size_defs.t1.train = dict(global_bach=2)
    with pytest.raises(SweepConfigError, match="size_defs.t1.train.global_bach: no such field"):
        plan_sweep(cfg)

def test_rows_carry_arm_display_and_colour(tiny_sweep):
    wd, proc = tiny_sweep
    rows = read_jsonl(wd / "results.jsonl")
    want = {"full": ("Full Attention", "Blues"), "moba": ("MoBA", "Reds")}
    assert {r["arm"]: (r["arm_display"], r["arm_colour"]) for r in rows} == want
    with open(wd / "results.csv") as f:
        assert {r["arm_display"] for r in csv.DictReader(f)} == {"Full Attention", "MoBA"}
    assert "Full Attention: L = " in proc.stdout   # the fitted laws name arms by display name


def test_arm_labels_from_the_registry_or_the_arm_def():
    from moba_jax.sweep.plan import SweepConfigError, sweep_fingerprint
    cfg = get_config()
    cfg.arms = "full,moba,mla,kimi_linear,moba_last1_full,moba_switch90"
    labels = {p.arm: (p.arm_display, p.arm_colour) for p in plan_sweep(cfg)}
    assert labels == {"full": ("Full Attention", "Blues"), "moba": ("MoBA", "Reds"),
                      "mla": ("MLA", "Blues"), "kimi_linear": ("Kimi Linear", "Reds"),
                      "moba_last1_full": ("MoBA (last layer full)", "Reds"),
                      "moba_switch90": ("MoBA, full for the last 10%", "Reds")}
    before = sweep_fingerprint(cfg)
    cfg.arm_defs.moba.colour = "Oranges"
    cfg.arm_defs.moba.display_name = "Block sparse"
    assert {p.arm_colour for p in plan_sweep(cfg) if p.arm == "moba"} == {"Oranges"}
    assert {p.arm_display for p in plan_sweep(cfg) if p.arm == "moba"} == {"Block sparse"}
    assert sweep_fingerprint(cfg) == before      # labels change no run
    cfg.base.train.tensorboard = True
    assert sweep_fingerprint(cfg) == before      # nor does logging
    lr, cfg.base.train.lr = cfg.base.train.lr, 1e-4
    assert sweep_fingerprint(cfg) != before      # what a run computes does
    cfg.base.train.lr = lr
    cfg.arm_defs.moba.display_name = " "
    with pytest.raises(SweepConfigError, match="arm_defs.moba.display_name"):
        plan_sweep(cfg)


def test_end_of_sweep_lines(monkeypatch):
    """The figure is drawn only by process 0 of a worker that sees the sweep complete."""
    import types

    from experiments import summary
    from moba_jax.sweep.worker import SweepOutcome

    drawn = []
    monkeypatch.setattr(summary, "summarize", lambda wd, rows, conv, echo: drawn.append(wd))
    st = lambda name, state, detail="": {"plan": types.SimpleNamespace(name=name),  # noqa: E731
                                         "state": state, "detail": detail}
    rows = [{"run": "a"}]

    def lines(outcome):
        out = []
        summary.finish(outcome, "WD", "exact", echo=out.append)
        return out

    assert lines(SweepOutcome(rows, [st("a", "done"), st("b", "failed", "boom")])) == [
        "1 runs failed: b: boom (fix the cause, then relaunch with --retry_failed)"]
    assert drawn == ["WD"]
    left = lines(SweepOutcome(rows, [st("a", "done"), st("b", "running"), st("c", "pending")]))
    assert left == ["2 runs still running or pending (b, c); the worker that finishes the last "
                    "run writes the figure; see --status"]
    assert lines(SweepOutcome(rows, [], main=False)) == []
    assert lines(SweepOutcome(rows, [], dry_run=True)) == []
    assert drawn == ["WD"]


# A raw tab inside a string: json's own message stops at "Invalid control character at".
_BAD_JSON = '{\n  "fingerprint": "a\tb"\n}\n'
_BAD_AT = f"line 2 column {_BAD_JSON.splitlines()[1].index(chr(9)) + 1} (Invalid control character)"


@pytest.mark.parametrize("with_config", [True, False], ids=["config", "pinned"])
def test_malformed_sweep_json_is_one_complete_line(tmp_path, with_config):
    (tmp_path / "sweep.json").write_text(_BAD_JSON)
    args = ["--config=configs/scaling.py:tiny"] if with_config else []
    proc = run_cli("experiments.sweep", *args, f"--workdir={tmp_path}", "--status")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.splitlines() == [
        f"error: {tmp_path / 'sweep.json'} is not valid JSON at {_BAD_AT}; fix it, or delete it "
        "and rerun with the sweep's exact --config and overrides (it is written again from them)"]


def test_malformed_result_json_names_file_and_fix(tmp_path):
    from moba_jax.sweep.plan import SweepConfigError
    from moba_jax.sweep.results import collect_results
    plans = plan_sweep(get_config("tiny"))
    (tmp_path / plans[0].name).mkdir()
    bad = tmp_path / plans[0].name / "result.json"
    bad.write_text(_BAD_JSON)
    with pytest.raises(SweepConfigError) as e:
        collect_results(str(tmp_path), plans)
    assert str(e.value) == (f"{bad} is not valid JSON at {_BAD_AT}; delete it and rerun the "
                            "sweep: the run resumes from its last checkpoint and writes it again")
