"""The device check: what ``python -m experiments.device_check`` measures, in which order,
and how its time budget is shared.

    python -m experiments.device_check --out=/tmp/dc --budget_s=480     # on a GPU machine
    python -m experiments.device_check --smoke --out=/tmp/dc_smoke      # CPU, tiny shapes

Each *job* below (one or more items: implementations, arms, checks) runs in its own
subprocess, in list order, with a hard time limit:
``limit = (budget left) * weight / (weights of this job and all after it)``, at least
``min_s`` when that much is left. A job that ends early hands its unused seconds to the
ones after it; one that hangs in a compile or crashes costs only its own share. The test
suite (``suite``) runs from the start in the background on the cores the jobs leave free.

Sections, in priority order (the issue's (a), (b), (c), then the accuracy checks):

* ``attention``: forward and forward+backward, one job per implementation, every length,
  on the same inputs (``experiments/device_check/inputs.py``): dense causal attention,
  MoBA, each KDA implementation, and the KDA anchors (FLA's ``chunk_kda``,
  jax-linear-attention's KDA; ``experiments/device_check/anchors.py``);
* ``training``: a bf16 matmul peak measured in the run, then tokens/s, compile seconds and
  MFU of the trainer's step per arm;
* ``tiles``: MoBA's kernel tilings at one shape;
* ``accuracy``: small shapes (each compiles in seconds): our kernels against their
  references, the anchors against our xla path.
"""
from __future__ import annotations

import ml_collections

# The attention jobs in priority order: ((implementations, run in turn in one process),
# weight, min_s).
GPU_ATTENTION = (
    (("dense_cudnn",), 0.6, 20),
    (("moba_pallas",), 1.2, 30),
    (("kda_pallas",), 1.0, 30),
    (("fla_chunk_kda",), 1.5, 45),   # its first call at each shape autotunes its kernels
    (("jla_kda",), 1.0, 30),
    (("kda_xla",), 1.6, 40),
)

# Training arms: model overrides on top of ``training.model``.
ARMS = {
    "full": {"attention_pattern": "full"},
    "moba": {"attention_pattern": "moba"},
    "kimi_linear": {"attention_pattern": "kda,kda,kda,mla"},
}


def _gpu() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.batch, c.heads, c.head_dim, c.dtype = 1, 16, 128, "bfloat16"
    c.seq_lens = (4096, 16384, 65536, 131072)
    c.iters = 10                  # timed calls per point at most ...
    c.max_seconds_per_point = 1.0   # ... or fewer once they took this long together
    # MoBA block 512, top-3; the tiling that was fastest of four at H=16, T=16K on an H200
    # (2026-12-04, 4.22 ms against 7.04 ms for (128, 64); shared/gpu/2026-12-04-h200).
    c.moba = ml_collections.ConfigDict(dict(
        block_size=512, top_k=3,
        block_sizes=dict(block_rows=64, block_k=64, num_warps=4, num_stages=2)))
    c.attention = GPU_ATTENTION

    t = c.training = ml_collections.ConfigDict()
    # ~150M non-embedding parameters (154M for full attention: 12 x (4 x 1024^2 +
    # 3 x 1024 x 2816)), 32K vocabulary, bf16, 8 x 4096 tokens per step.
    t.seq_len, t.global_batch, t.steps, t.warmup = 4096, 8, 5, 1
    t.model = ml_collections.ConfigDict(dict(
        vocab_size=32768, d_model=1024, n_layers=12, n_heads=8, n_kv_heads=8, head_dim=128,
        mlp_dim=2816, dtype="bfloat16"))
    t.implementations = ml_collections.ConfigDict(dict(full="cudnn", moba="pallas", kda="xla",
                                                       mla="xla"))
    # ((items, weight, min_s), ...): "peak" is the measured matmul peak, then one job per arm
    t.jobs = ((("peak",), 0.2, 15),) + tuple(((a,), 1.4, 60) for a in ARMS)
    t.spec_peak_flops = 989e12     # H100/H200 SXM dense bf16 spec
    t.peak = ml_collections.ConfigDict(dict(n=8192, dtype="bfloat16", repeats=10))

    c.tiles = ml_collections.ConfigDict(dict(
        impl="moba_pallas", seq_len=16384, weight=0.6, min_s=20,
        # (block_rows, block_k, num_warps, num_stages)
        tilings=((64, 64, 4, 2), (128, 64, 4, 2), (64, 128, 4, 2), (128, 128, 8, 2),
                 (64, 32, 4, 2), (32, 64, 4, 2))))

    a = c.accuracy = ml_collections.ConfigDict()
    a.jobs = ((("ours",), 0.7, 30), (("fla_chunk_kda",), 0.3, 20), (("jla_kda",), 0.3, 20))
    a.dtypes = ("float32", "bfloat16")
    # small shapes: (B, T, H, D)
    a.moba_shape, a.moba_block_size, a.moba_top_k = (1, 1024, 4, 128), 128, 3
    a.kda_shape = (1, 293, 4, 128)     # T not a multiple of the 64-token chunk
    a.dense_shape = (1, 1024, 4, 128)

    c.suite = ml_collections.ConfigDict(dict(
        args=("-q", "-p", "no:randomly", "--ignore=tests/test_notebook.py"),
        workers=5,                 # pytest-xdist workers where it is installed
        cores=6))                  # the last `cores` CPUs; the jobs keep the others
    c.env = ml_collections.ConfigDict(dict(weight=0.1, min_s=20))
    # draws every length's inputs once, on the device, into the cache the jobs share
    c.inputs = ml_collections.ConfigDict(dict(weight=0.2, min_s=30))
    c.reserve_s = 15               # kept back for the summary and the suite's wrap-up
    c.cache_dir = ""               # set from --cache_dir
    return c


def _smoke() -> ml_collections.ConfigDict:
    """Every job's code path on CPU at tiny shapes, in about a minute."""
    c = _gpu()
    c.heads, c.head_dim, c.dtype = 2, 32, "float32"
    c.seq_lens = (128,)
    c.iters, c.max_seconds_per_point = 2, 0.2
    c.moba.block_size, c.moba.top_k = 32, 2
    c.moba.block_sizes = dict(block_rows=32, block_k=32, num_warps=4, num_stages=2)
    # One process per section: the dense, MoBA and KDA references (they compile in a
    # second or two on CPU), then the anchors (recorded as skipped without torch or a GPU).
    c.attention = ((("dense_xla", "moba_reference", "kda_reference"), 1.0, 15),
                   (("fla_chunk_kda", "jla_kda"), 0.2, 5))
    t = c.training
    t.seq_len, t.global_batch, t.steps, t.warmup = 64, 2, 1, 1
    t.model = ml_collections.ConfigDict(dict(
        vocab_size=259, d_model=32, n_layers=2, n_heads=2, n_kv_heads=2, head_dim=16,
        mlp_dim=96, dtype="float32"))
    # the references: each compiles in a few seconds on CPU (KDA's chunked xla path in ~20)
    t.implementations = ml_collections.ConfigDict(dict(full="xla", moba="reference",
                                                       kda="reference", mla="xla"))
    # The peak and one arm: every arm runs the same code (arm_config, then the trainer's
    # step through moba_jax.train.throughput), and a train step compiles in 10-40 s on
    # this CPU (tests/test_throughput.py times the others).
    t.jobs = ((("peak", "full"), 1.5, 30),)
    t.peak = ml_collections.ConfigDict(dict(n=256, dtype="float32", repeats=3))
    c.tiles = ml_collections.ConfigDict(dict(impl="moba_reference", seq_len=128, weight=0.4,
                                             min_s=10, tilings=((32, 32, 4, 2), (16, 32, 4, 2))))
    a = c.accuracy
    a.moba_shape, a.moba_block_size, a.moba_top_k = (1, 128, 2, 32), 32, 2
    a.kda_shape = (1, 45, 2, 32)
    a.dtypes = ("float32",)
    a.jobs = ((("ours", "fla_chunk_kda", "jla_kda"), 0.6, 15),)
    a.dense_shape = (1, 64, 2, 32)
    c.suite = ml_collections.ConfigDict(dict(args=("-q", "tests/test_layering.py"),
                                             workers=0, cores=1))
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "gpu"
    if variant not in ("gpu", "smoke"):
        raise ValueError(f"unknown variant {variant!r}; use gpu (default) or smoke, e.g. "
                         "--config=configs/device_check.py:smoke")
    c = _smoke() if variant == "smoke" else _gpu()
    c.variant = variant
    return c
