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
    with pytest.raises(ValueError, match="use cpu \\(default\\), gpu or smoke"):
        bench_attention.get_config("tpu")


# slow (~40 s): the benchmark CLI end to end; the kernels it times are tested elsewhere.
@pytest.mark.slow
def test_tiny_benchmark_writes_results(tmp_path):
    cfg = bench_attention.get_config("smoke")
    cfg.seq_lens = (128, 256)
    cfg.fit_range = (128, 256)
    cfg.iters = 1
    cfg.implementations = {"dense_xla": 0, "moba_xla": 0, "kda_xla": 0, "moba_nonsense": 0}
    cfg.check.seq_lens = (128,)
    lines = []
    summary = bench.run(cfg, str(tmp_path), log=lines.append)

    assert os.path.getsize(tmp_path / "bench.png") > 0
    with open(tmp_path / "bench.json") as f:
        assert json.load(f)["exponents"] == summary["exponents"]
    ok = [r for r in summary["results"] if r.get("time_s")]
    assert {(r["impl"], r["mode"]) for r in ok} == {
        (i, m) for i in ("dense_xla", "moba_xla", "kda_xla") for m in bench.MODES}
    # A failing implementation is reported and skipped, not fatal.
    failed = [r for r in summary["results"] if r["impl"] == "moba_nonsense"]
    assert len(failed) == 4 and all("is unknown" in r["error"] for r in failed)
    assert set(summary["exponents"]) == {"moba_xla/fwd", "moba_xla/fwd_bwd"}
    assert all(c["max_rel_err"] < 1e-5 for c in summary["checks"])
    assert sum("T=" in l and "ms" in l for l in lines) == 12  # one line per measurement
    assert {u["impl"] for u in summary["speedups"]} == {"moba_xla", "kda_xla"}
