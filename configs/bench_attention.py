"""Attention benchmark on CPU: dense causal attention vs MoBA and KDA (``kernels/bench.py``).
The GPU measurements (timings beside FLA and jax-linear-attention, training throughput,
MoBA tilings) are the device check's: ``configs/device_check.py``.

CPU (default; about 10 minutes on 2 cores, most of it dense attention at 32K)::

    python -m experiments.benchmark --config=configs/bench_attention.py \\
        --workdir=/tmp/bench_cpu

Smoke test (the same code path on tiny shapes, well under a minute)::

    python -m experiments.benchmark --config=configs/bench_attention.py:smoke \\
        --workdir=/tmp/bench_smoke

Any field can be overridden, e.g. ``--config.iters=5 --config.seq_lens='(2048,4096)'``.
"""
from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "cpu"
    if variant not in ("cpu", "smoke"):
        raise ValueError(f"unknown variant {variant!r}; use cpu (default) or smoke, e.g. "
                         "--config=configs/bench_attention.py:smoke (the GPU measurements: "
                         "python -m experiments.device_check)")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.batch = 1
    # Every length is timed once per head count (query heads = kv heads).
    c.head_counts = (1,)
    c.head_dim = 128
    c.dtype = "float32"
    c.block_size = 512
    c.top_k = 3
    c.iters = 3
    # After the warm-up call, stop repeating a point once its timed calls took this long
    # (at least one timed call; 0: always `iters`).
    c.max_seconds_per_point = 0.0
    c.verbose_errors = False
    # Tiling of the sparse MoBA paths (kernels.moba.BlockSizes fields).
    c.block_sizes = ml_collections.ConfigDict(dict(block_rows=256, block_k=64, num_warps=4,
                                                   num_stages=2))
    c.seq_lens = (2048, 4096, 8192, 16384, 32768)
    # implementation -> largest T x heads it runs at (0: no limit). Besides the
    # attention paths: "moba_routing" times MoBA's routing alone (gates, top-k and the
    # kernels' work lists, forward only), the part outside the kernels.
    c.implementations = ml_collections.ConfigDict(
        {"dense_xla": 0, "moba_xla": 0, "moba_reference": 4096, "kda_xla": 0,
         "kda_reference": 4096})
    c.fit_impls = ("moba_xla",)
    c.fit_range = (8192, 32768)
    # Accuracy checks run before timing: each "impl:against" pair at each length and
    # head count in `check_heads` (off on CPU: the tests cover it).
    c.checks = ()
    c.check_seq_lens = ()
    c.check_heads = 1

    if variant == "smoke":
        # Every step of the full run on tiny shapes; KDA runs once, as the token recurrence
        # (the chunked xla path's CPU compile takes ~10 s per call).
        c.head_counts = (1, 2)
        c.head_dim = 32
        c.block_size = 32
        c.iters = 2
        c.max_seconds_per_point = 1.0
        c.block_sizes = ml_collections.ConfigDict(dict(block_rows=32, block_k=32,
                                                       num_warps=4, num_stages=2))
        c.seq_lens = (128, 256)
        c.implementations = ml_collections.ConfigDict(
            {"dense_xla": 0, "moba_xla": 0, "moba_routing": 0, "kda_reference": 128})
        c.fit_range = (128, 256)
        c.checks = ("moba_xla:moba_reference",)
        c.check_seq_lens = (128,)
        c.check_heads = 2
    return c
