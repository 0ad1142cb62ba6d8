"""The attention benchmark: golden FLOP counts and a tiny end-to-end run."""
from __future__ import annotations

import json
import os

import pytest

from configs import bench_attention
from kernels import bench


def test_moba_pairs_golden():
    # T=5, block 2, top-2: tokens 0,1 -> 1+2; tokens 2,3 -> (1+2) + 2*2; token 4 -> 1 + 2.
    assert bench.moba_pairs(5, 2, 2) == 13
    # 8K, block 512, top-3: 16 blocks * (512*513/2) causal + 512*512 * (1 + 2*14) past.
    assert bench.moba_pairs(8192, 512, 3) == 16 * 131328 + 512 * 512 * 29 == 9703424
    # Enough blocks to cover everything: full causal.
    assert bench.moba_pairs(100, 16, 7) == 100 * 101 // 2


def test_flops_golden():
    assert bench.dense_causal_flops(4, 8) == 4 * 8 * 10
    assert bench.moba_flops(5, 8, 2, 2, heads=3, batch=2) == 4 * 8 * 13 * 6
    assert bench.kda_flops(10, 8, heads=2) == 2 * 10 * (6 * 64 + 3 * 64 * 8 + 64 * 64)


def test_bad_variant_names_the_choices():
    with pytest.raises(ValueError, match="use cpu \\(default\\) or smoke"):
        bench_attention.get_config("tpu")


def test_smoke_benchmark_end_to_end(tmp_path):
    """``configs/bench_attention.py:smoke`` end to end on CPU: checks, every head count,
    the routing row, the table, bench.json/png."""
    cfg = bench_attention.get_config("smoke")
    lines = []
    summary = bench.run(cfg, str(tmp_path), log=lines.append)

    assert os.path.getsize(tmp_path / "bench.png") > 0
    with open(tmp_path / "bench.json") as f:
        assert json.load(f)["exponents"] == summary["exponents"]
    ok = {(r["impl"], r["mode"], r["heads"], r["seq_len"]) for r in summary["results"]
          if r.get("time_s")}
    assert not [r for r in summary["results"] if r.get("error")]
    # Every implementation at every head count and length, within its T x H limit;
    # the routing row is forward only.
    expected = {(i, m, h, t) for h in (1, 2) for t in (128, 256)
                for i in ("dense_xla", "moba_xla") for m in bench.MODES}
    expected |= {("moba_routing", "fwd", h, t) for h in (1, 2) for t in (128, 256)}
    expected |= {("kda_reference", m, 1, 128) for m in bench.MODES}
    assert ok == expected
    assert {(c["impl"], c["tensor"]) for c in summary["checks"]} == {
        ("moba_xla", t) for t in ("out", "dq", "dk", "dv")}
    assert all(c["max_rel_err"] < 1e-5 and c["heads"] == 2 for c in summary["checks"])
    assert set(summary["exponents"]) == {f"moba_xla/{m}/H{h}" for m in bench.MODES
                                         for h in (1, 2)}
    # The table has one row per (heads, T) and a cell per implementation.
    table = bench.table(summary).splitlines()
    assert len(table) == 3 + 4 and "moba_routing" in table[1]


def test_failing_implementation_is_recorded_not_fatal(tmp_path):
    cfg = bench_attention.get_config("smoke")
    cfg.seq_lens = (128,)
    cfg.head_counts = (1,)
    cfg.checks = ()
    cfg.implementations = {"dense_xla": 0, "moba_nonsense": 0}
    summary = bench.run(cfg, str(tmp_path), log=lambda s: None)
    failed = [r for r in summary["results"] if r["impl"] == "moba_nonsense"]
    assert len(failed) == 2 and all("is unknown" in r["error"] for r in failed)
    assert "failed" in bench.table(summary)


def test_bad_check_name_says_the_fix():
    cfg = bench_attention.get_config("smoke")
    cfg.checks = ("moba_xla",)
    with pytest.raises(ValueError, match="must read 'impl:against'"):
        bench.check_against(cfg, print)
