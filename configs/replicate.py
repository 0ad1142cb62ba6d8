"""The replication study: the papers' two comparisons, scaled down to a 2-core CPU.

One command (sweep, evaluation at twice the training length, report)::

    python -m experiments.replicate --workdir=runs/replicate --out=docs/replication/report

or step by step::

    python -m experiments.sweep --config=configs/replicate.py --workdir=runs/replicate
    python -m experiments.evaluate --workdir=runs/replicate --config.seq_len=2048 \\
        --config.bucket_size=256 --config.trailing=256
    python -m analysis.report --workdir=runs/replicate --out=docs/replication/report --convention=6nd

Plan only: ``python -m experiments.sweep --config=configs/replicate.py --dry_run``.

Designed as both papers designed their scaling sweeps, smaller:

- four arms: full attention, MoBA, MLA and Kimi Linear (3 KDA : 1 MLA, cycled);
- context 1024, MoBA block 64 with top-3 (the current block and two selected
  past blocks): each query sees at most 192 of 1024 keys (18.75%, the MoBA
  paper's 512 / top-3 at 8K scaled by 8);
- three sizes spanning over 4x in non-embedding parameters, every arm trained
  on the same tokens per size (the papers' design), at least 10 tokens per
  non-embedding parameter of the largest arm of that size; compute on the 6ND
  axis (``budget_convention="6nd"``), as both papers plot it;
- two seeds per arm and size (``train.seed``: initialisation and data order), so
  the report's intervals reflect run-to-run noise;
- every final checkpoint evaluated at 2048 tokens (twice the training length),
  with 256-token position buckets and the trailing 256-token loss.

Full attention and MLA use the ``"blocked"`` path (exact; the fast one on CPU).
The measured wall time of the one command is in docs/measurements.md.
"""
import ml_collections

from configs import scaling

SEQ_LEN = 1024
EVAL_SEQ_LEN = 2 * SEQ_LEN
MIN_TOKENS_PER_PARAM = 10


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = scaling.get_config()
    c.base.train.update(seq_len=SEQ_LEN, global_batch=4, log_every=10, checkpoint_every=100,
                        warmup_frac=0.05, progress=True)
    c.base.eval.update(points=8, batches=24)
    c.base.model.attention.full.update(implementation="blocked", query_block=256)
    c.base.model.attention.mla.update(implementation="blocked", query_block=256)
    c.budget_convention = "6nd"
    moba = dict(block_size=64, top_k=3, implementation="xla")
    c.arm_defs.moba.attention.moba.update(moba)
    c.arm_defs.mla.attention.mla.update(implementation="blocked")
    c.arm_defs.kimi_linear.attention.mla.update(implementation="blocked")
    c.arms = "full,moba,mla,kimi_linear"
    c.size_defs = ml_collections.ConfigDict(dict(
        r1=dict(d_model=32, n_layers=4, n_heads=1, n_kv_heads=1, head_dim=32, mlp_dim=96, lr=5e-3),
        r2=dict(d_model=48, n_layers=4, n_heads=2, n_kv_heads=1, head_dim=24, mlp_dim=128, lr=4e-3),
        r3=dict(d_model=64, n_layers=4, n_heads=2, n_kv_heads=1, head_dim=32, mlp_dim=256, lr=3.5e-3),
    ))
    c.sizes = "r1,r2,r3"
    c.budgets = ""
    c.tokens = ",".join(str(t) for t in equal_tokens(c))
    c.seeds = "0,1"
    return c


def equal_tokens(c: ml_collections.ConfigDict) -> list[int]:
    """Training tokens per size, the same for every arm: the first whole number of steps
    at or above ``MIN_TOKENS_PER_PARAM`` tokens per non-embedding parameter of the
    largest arm of that size (Kimi Linear's KDA layers carry the most parameters)."""
    from moba_jax.accounting import non_embedding_params
    from moba_jax.sweep.plan import _merge
    per_step = c.base.train.seq_len * c.base.train.global_batch
    out = []
    for size in c.sizes.split(","):
        largest = 0
        for arm in c.arms.split(","):
            model = c.base.model.copy_and_resolve_references()
            shape = {k: v for k, v in c.size_defs[size].to_dict().items() if k != "lr"}
            _merge(model, shape, f"size_defs.{size}")
            _merge(model, {k: v for k, v in c.arm_defs[arm].to_dict().items()
                           if k not in ("train", "display_name", "colour")}, f"arm_defs.{arm}")
            largest = max(largest, non_embedding_params(model))
        steps = -(-MIN_TOKENS_PER_PARAM * largest // per_step)
        out.append(steps * per_step)
    return out
