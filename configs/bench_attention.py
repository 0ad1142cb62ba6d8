"""Attention benchmark: dense causal attention vs MoBA and KDA (see ``kernels/bench.py``).

CPU (default; about 10 minutes on 2 cores, most of it dense attention at 32K)::

    python -m experiments.benchmark --config=configs/bench_attention.py \\
        --workdir=/tmp/bench_cpu

GPU (H100, jax 0.11.2: about 3 minutes; bf16, T = 4K..128K, the Pallas Triton kernel
checked against the xla path at 4K and 16K; the xla path's GPU compile became very slow
at 64K, so it is timed up to 32K only)::

    python -m experiments.benchmark --config=configs/bench_attention.py:gpu \\
        --workdir=/tmp/bench_gpu

Smoke test (seconds)::

    python -m experiments.benchmark --config=configs/bench_attention.py:smoke \\
        --workdir=/tmp/bench_smoke

Any field can be overridden, e.g. ``--config.iters=5 --config.seq_lens='(2048,4096)'``.
"""
from __future__ import annotations

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "cpu"
    if variant not in ("cpu", "gpu", "smoke"):
        raise ValueError(f"unknown variant {variant!r}; use cpu (default), gpu or smoke, "
                         "e.g. --config=configs/bench_attention.py:gpu")
    c = ml_collections.ConfigDict()
    c.variant = variant
    c.batch = 1
    c.num_heads = 1
    c.num_kv_heads = 1
    c.head_dim = 128
    c.dtype = "float32"
    c.block_size = 512
    c.top_k = 3
    c.iters = 3
    c.verbose_errors = False
    # Tiling of the sparse MoBA paths (kernels.moba.BlockSizes fields).
    c.block_sizes = ml_collections.ConfigDict(dict(block_rows=256, block_k=64, num_warps=4,
                                                   num_stages=2))
    c.seq_lens = (2048, 4096, 8192, 16384, 32768)
    # implementation -> largest T it runs at (0: no limit).
    c.implementations = ml_collections.ConfigDict(
        {"dense_xla": 0, "moba_xla": 0, "moba_reference": 4096, "kda_xla": 0,
         "kda_reference": 4096})
    c.fit_impls = ("moba_xla",)
    c.fit_range = (8192, 32768)
    # Accuracy check run before timing (off on CPU: the tests cover it).
    c.check = ml_collections.ConfigDict(dict(impl="moba_xla", against="moba_reference",
                                             seq_lens=()))

    if variant == "gpu":
        c.dtype = "bfloat16"
        c.iters = 10
        c.block_sizes = ml_collections.ConfigDict(dict(block_rows=128, block_k=64,
                                                       num_warps=4, num_stages=2))
        c.seq_lens = (4096, 8192, 16384, 32768, 65536, 131072)
        c.implementations = ml_collections.ConfigDict(
            {"dense_cudnn": 0, "dense_xla": 16384, "moba_pallas": 0, "moba_xla": 32768,
             "kda_xla": 0, "kda_pallas": 0})
        c.fit_impls = ("moba_pallas",)
        c.fit_range = (16384, 131072)
        c.check = ml_collections.ConfigDict(dict(impl="moba_pallas", against="moba_xla",
                                                 seq_lens=(4096, 16384)))
    elif variant == "smoke":
        c.head_dim = 32
        c.block_size = 64
        c.iters = 2
        c.block_sizes = ml_collections.ConfigDict(dict(block_rows=32, block_k=32,
                                                       num_warps=4, num_stages=2))
        c.seq_lens = (256, 512)
        c.implementations = ml_collections.ConfigDict(
            {"dense_xla": 0, "moba_xla": 0, "moba_reference": 512, "kda_xla": 0,
             "kda_reference": 512})
        c.fit_range = (256, 512)
        c.check = ml_collections.ConfigDict(dict(impl="moba_xla", against="moba_reference",
                                                 seq_lens=(256,)))
    return c
