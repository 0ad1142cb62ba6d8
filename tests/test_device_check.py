"""``python -m experiments.device_check``: the smoke run writes every section's rows, a job
that overruns is killed at its own limit and the rest runs, bad flags fail in one line,
and the GPU config covers the measurements the GPU issues ask for."""
from __future__ import annotations

import json
import os

import pytest

from configs import device_check as dc_config
from experiments.device_check import plan, records, report
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("dc") / "out"
    cache = tmp_path_factory.mktemp("dc_cache")
    proc = run_cli("experiments.device_check", "--smoke", f"--out={out}",
                   f"--cache_dir={cache}", check=True)
    return out, records.read(str(out)), proc


def _rows(recs, section, kind=None):
    return [r for r in recs if r.get("section") == section and (kind is None or r["kind"] == kind)]


def test_smoke_every_job_finishes_in_its_limit(smoke):
    _, recs, _ = smoke
    jobs = {r["job"]: r["status"] for r in recs if r.get("kind") == "job"}
    cfg = dc_config.get_config("smoke")
    assert list(jobs) == [j.key for j in plan.jobs(cfg)]
    assert set(jobs.values()) == {"ok"}, jobs
    env = _rows(recs, "env", "env")[0]
    assert env["backend"] == "cpu" and env["versions"]["jax"]


def test_smoke_attention_rows(smoke):
    _, recs, _ = smoke
    cfg = dc_config.get_config("smoke")
    ours = [i for i in plan.items(cfg, "attention") if i.split("_")[0] in ("dense", "moba", "kda")]
    assert ours == ["dense_xla", "moba_reference", "kda_reference"]
    pts = {(r["impl"], r["seq_len"], r["mode"]) for r in _rows(recs, "attention", "point")}
    assert pts == {(i, t, m) for i in ours for t in cfg.seq_lens for m in ("fwd", "fwd_bwd")}
    for r in _rows(recs, "attention", "point"):
        assert r["time_s"] > 0 and r["warmup_s"] > 0 and 1 <= len(r["times_s"]) <= cfg.iters
        assert r["flops"] > 0 and r["tflops_per_s"] == pytest.approx(r["flops"] / r["time_s"] / 1e12)
    # the anchors are not installed here: each is recorded as skipped, with the reason
    skipped = {r["impl"]: r["reason"] for r in _rows(recs, "attention", "skipped")}
    assert set(skipped) == {"fla_chunk_kda", "jla_kda"} and all(skipped.values())


def test_smoke_training_rows(smoke):
    _, recs, _ = smoke
    peak = _rows(recs, "training", "peak")
    assert len(peak) == 1 and peak[0]["flops_per_s"] > 0
    rows = {r["arm"]: r for r in _rows(recs, "training", "point")}
    assert list(rows) == ["full"]                  # the smoke times one arm
    for r in rows.values():
        assert r["tokens_per_s"] > 0 and r["compile_s"] > 0 and r["step_ms"] > 0
        assert r["mfu_measured_peak"] == pytest.approx(r["compiled_flops_per_s"] / peak[0]["flops_per_s"])
        assert r["mfu_spec"] == pytest.approx(r["compiled_flops_per_s"] / 989e12)


def test_smoke_tiles_accuracy_and_suite(smoke):
    out, recs, proc = smoke
    cfg = dc_config.get_config("smoke")
    tiles = _rows(recs, "tiles", "point")
    assert [(r["block_rows"], r["block_k"]) for r in tiles] == [t[:2] for t in cfg.tiles.tilings]
    checks = _rows(recs, "accuracy", "check")
    assert {r["impl"] for r in checks} == {"moba_reference", "kda_reference", "dense_xla"}
    assert all(r["ok"] for r in checks), [r for r in checks if not r["ok"]]
    kda = {r["tensor"] for r in checks if r["impl"] == "kda_reference"}
    assert kda == {"out", "dq", "dk", "dv", "dg", "dbeta"}
    assert {r["impl"] for r in _rows(recs, "accuracy", "skipped")} == {"fla_chunk_kda", "jla_kda"}
    suite = _rows(recs, "suite", "result")[0]
    assert suite["status"] == "finished" and suite["returncode"] == 0
    assert "passed" in suite["summary"]
    text = (out / report.FILE).read_text()
    assert text.strip() in proc.stdout          # the summary is printed and written
    for heading in ("Attention, forward+backward", "Training throughput", "MoBA tilings",
                    "Accuracy", "Test suite", "Jobs"):
        assert heading in text


def test_a_job_past_its_limit_is_killed_and_recorded(tmp_path):
    """The env job imports jax (seconds): with a 0.3 s limit it is killed, recorded, and
    the parent goes on."""
    from experiments.device_check import __main__ as dc

    out = str(tmp_path)
    cfg = dc_config.get_config("smoke")
    cfg.cache_dir = str(tmp_path / "cache")
    with open(os.path.join(out, "device_check_config.json"), "w") as f:
        json.dump(cfg.to_dict(), f)
    with open(os.path.join(out, "log"), "w") as log:
        rec = dc.run_job(plan.Job("env", ("env",), 1.0, 1.0), out, 0.3, None, log)
    assert rec["status"] == "killed at its 0 s limit" and rec["seconds"] < 5
    assert records.read(out)[-1]["status"] == rec["status"]
    assert not _rows(records.read(out), "env", "env")


def test_time_limits_share_the_budget_and_respect_minimums():
    jobs = [plan.Job("a", ("x",), 1.0, 10), plan.Job("a", ("y",), 3.0, 10)]
    assert plan.time_limit(jobs, 100) == 25
    assert plan.time_limit(jobs[1:], 100) == 100
    assert plan.time_limit(jobs, 20) == 10          # the minimum, while that much is left
    assert plan.time_limit(jobs, 6) == 6            # never more than what is left
    assert plan.time_limit(jobs, -1) == 0


def test_time_call_rule():
    calls = []
    r = records.time_call(lambda: calls.append(1), iters=4, max_seconds=0)
    assert len(calls) == 5 and len(r["times_s"]) == 4 and r["warmup_s"] >= 0
    calls.clear()
    r = records.time_call(lambda: calls.append(1), iters=4, max_seconds=1e-12)
    assert len(calls) == 2 and len(r["times_s"]) == 1


def test_report_of_a_cut_short_run():
    recs = [dict(section="run", kind="start", budget_s=10, argv=["python"], wall_time=0),
            dict(section="attention", kind="error", impl="moba_pallas", seq_len=4096,
                 mode="fwd_bwd", batch=1, heads=16, head_dim=128, dtype="bfloat16", error="E"),
            dict(section="attention", kind="job", job="attention:kda_xla", limit_s=40,
                 seconds=40.1, status="killed at its 40 s limit")]
    text = report.markdown(recs, wall_s=12)
    assert "| 4,096 | error |" in text and "killed at its 40 s limit" in text


@pytest.mark.parametrize("args,message", [
    (["--budget_s=0"], "the budget must be positive"),
    (["--sections=attention,bogus"], "unknown bogus"),
    (["--config=configs/device_check.py:smoke", "--smoke", "--config.iters=3"], None),
])
def test_bad_flags_fail_in_one_line(tmp_path, args, message):
    sections = [] if any(a.startswith("--sections") for a in args) else ["--sections=env"]
    proc = run_cli("experiments.device_check", f"--out={tmp_path / 'o'}", "--smoke", *args,
                   *sections)
    if message is None:            # a consistent --config with --smoke is accepted
        assert proc.returncode == 0, proc.stderr[-2000:]
        return
    assert proc.returncode == 2 and message in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "o").exists()


def test_an_earlier_run_is_not_overwritten(tmp_path):
    (tmp_path / "device_check.json").write_text("[]")
    proc = run_cli("experiments.device_check", f"--out={tmp_path}", "--smoke", "--sections=env")
    assert proc.returncode == 2 and "already holds device_check.json" in proc.stderr
    assert (tmp_path / "device_check.json").read_text() == "[]"


def test_gpu_config_covers_the_issue_rows():
    from experiments.device_check import training
    from moba_jax.accounting import non_embedding_params

    cfg = dc_config.get_config("gpu")
    assert (cfg.batch, cfg.heads, cfg.head_dim, cfg.dtype) == (1, 16, 128, "bfloat16")
    assert tuple(cfg.seq_lens) == (4096, 16384, 65536, 131072)
    assert (cfg.moba.block_size, cfg.moba.top_k) == (512, 3)
    assert {"dense_cudnn", "moba_pallas", "kda_xla", "kda_pallas", "fla_chunk_kda",
            "jla_kda"} <= set(plan.items(cfg, "attention"))
    # on a GPU every item has a process (and a time limit) of its own
    assert all(len(j.items) == 1 for j in plan.jobs(cfg))
    keys = [j.key for j in plan.jobs(cfg)]
    # priority: timings, then training, then tilings, then the accuracy checks
    order = [k.split(":")[0] for k in keys]
    assert order == sorted(order, key=["env", "attention", "training", "tiles",
                                       "accuracy"].index)
    arms = {a: training.arm_config(cfg, a) for a in plan.items(cfg, "training") if a != "peak"}
    assert list(arms) == ["full", "moba", "kimi_linear"]
    assert arms["kimi_linear"].model.attention_pattern == "kda,kda,kda,mla"
    assert (cfg.training.seq_len, cfg.training.global_batch) == (4096, 8)
    assert 140e6 < non_embedding_params(arms["full"].model) < 160e6   # "~150M"
    with pytest.raises(ValueError, match="choose from full, moba, kimi_linear"):
        training.arm_config(cfg, "linear")
