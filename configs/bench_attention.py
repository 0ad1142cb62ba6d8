"""Attention benchmark: dense causal attention vs MoBA and KDA (see ``kernels/bench.py``),
and a training-throughput section (``experiments/benchmark.py``).

CPU (default; about 10 minutes on 2 cores, most of it dense attention at 32K)::

    python -m experiments.benchmark --config=configs/bench_attention.py \\
        --workdir=/tmp/bench_cpu

GPU (the device check of issue 16: dense cuDNN, MoBA Pallas, KDA Pallas and KDA xla,
T = 4K..128K, one head and 16 heads, head_dim 128, bfloat16; the Pallas kernels checked
against the xla paths first; then tokens/s and MFU of a ~150M-parameter model at seq 4K
with full attention, MoBA and the Kimi Linear hybrid)::

    python -m experiments.benchmark --config=configs/bench_attention.py:gpu \\
        --workdir=/tmp/bench_gpu

Smoke test (the same code path on CPU, well under a minute)::

    python -m experiments.benchmark --config=configs/bench_attention.py:smoke \\
        --workdir=/tmp/bench_smoke

Any field can be overridden, e.g. ``--config.iters=5 --config.seq_lens='(2048,4096)'``
or ``--config.training.arms=full`` (a comma-separated subset; empty: no training section).
"""
from __future__ import annotations

import ml_collections

# The training section's arms: model-config overrides on top of ``training.model``.
TRAINING_ARMS = {
    "full": {"attention_pattern": "full"},
    "moba": {"attention_pattern": "moba"},
    "kimi_linear": {"attention_pattern": "kda,kda,kda,mla"},
}


def _training(variant: str) -> ml_collections.ConfigDict:
    """The training-throughput section: one model size, several attention arms."""
    t = ml_collections.ConfigDict()
    t.arms = "full,moba,kimi_linear"
    t.steps = 5           # timed steps (median), after `warmup` steps that compile
    t.warmup = 2
    if variant == "gpu":
        # ~150M non-embedding parameters (12 x (4 x 1024^2 + 3 x 1024 x 2816) = 154M for
        # full attention), 32K vocabulary, bf16 compute, 8 x 4096 tokens per step.
        t.seq_len = 4096
        t.global_batch = 8
        t.model = ml_collections.ConfigDict(dict(
            vocab_size=32768, d_model=1024, n_layers=12, n_heads=8, n_kv_heads=8,
            head_dim=128, mlp_dim=2816, dtype="bfloat16"))
        # KDA: the xla path, ~6x faster than the Triton kernels at head_dim 128 on an H200
        # (README, "KDA"); the attention rows time both.
        t.implementations = ml_collections.ConfigDict(dict(
            full="cudnn", moba="pallas", kda="xla", mla="xla"))
        t.moba = ml_collections.ConfigDict(dict(block_size=512, top_k=3))
    else:
        t.seq_len = 256 if variant == "smoke" else 1024
        t.global_batch = 2 if variant == "smoke" else 8
        t.model = ml_collections.ConfigDict(dict(
            vocab_size=259, d_model=32 if variant == "smoke" else 128,
            n_layers=2 if variant == "smoke" else 4, n_heads=2 if variant == "smoke" else 4,
            n_kv_heads=2 if variant == "smoke" else 4,
            head_dim=16 if variant == "smoke" else 32,
            mlp_dim=96 if variant == "smoke" else 384, dtype="float32"))
        t.implementations = ml_collections.ConfigDict(dict(
            full="blocked", moba="blocked", kda="xla", mla="blocked"))
        t.moba = ml_collections.ConfigDict(dict(block_size=64, top_k=3))
        if variant == "smoke":
            t.moba.block_size = 32
        t.steps = 1 if variant == "smoke" else 5
        t.warmup = 1 if variant == "smoke" else 2
    return t


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "cpu"
    if variant not in ("cpu", "gpu", "smoke"):
        raise ValueError(f"unknown variant {variant!r}; use cpu (default), gpu or smoke, "
                         "e.g. --config=configs/bench_attention.py:gpu")
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
    c.training = _training(variant)
    c.training.arms = ""            # the CPU benchmark times attention only

    if variant == "gpu":
        c.head_counts = (1, 16)
        c.dtype = "bfloat16"
        c.iters = 10
        c.max_seconds_per_point = 1.5
        c.block_sizes = ml_collections.ConfigDict(dict(block_rows=128, block_k=64,
                                                       num_warps=4, num_stages=2))
        c.seq_lens = (4096, 8192, 16384, 32768, 65536, 131072)
        c.implementations = ml_collections.ConfigDict(
            {"dense_cudnn": 0, "moba_pallas": 0, "moba_routing": 0, "kda_pallas": 0,
             "kda_xla": 16 * 32768})
        c.fit_impls = ("moba_pallas",)
        c.fit_range = (16384, 131072)
        c.checks = ("moba_pallas:moba_xla", "kda_pallas:kda_xla")
        c.check_seq_lens = (4096, 16384)
        c.check_heads = 4
        c.training = _training(variant)
    elif variant == "smoke":
        # Every step of the gpu run on tiny shapes; KDA runs once, as the token recurrence
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
        c.training = _training(variant)
        c.training.arms = "full,moba"    # a Kimi Linear train step takes 13-40 s to compile here
    return c
