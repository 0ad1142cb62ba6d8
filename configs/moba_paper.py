"""The MoBA paper's scaling-law sweep (Table 1), for TPU/GPU users.

Plan only (prints each run's non-embedding parameters, tokens, FLOPs and
PFLOP/s-days; runs on a laptop)::

    python -m experiments.sweep --config=configs/moba_paper.py --dry_run

Train it on a pod (bring your own data; ``array_record`` of byte ids, see
moba_jax/data/config.py)::

    python -m experiments.sweep --config=configs/moba_paper.py --workdir=gs://... \\
        --config.base.data.source=array_record --config.base.data.path=/data/tokens \\
        --config.base.mesh.fsdp=8

Table 1 of the paper (block 512, top-3, 8K context, ~Chinchilla-optimal tokens):

    non-embedding  heads  layers  hidden  tokens
    545M           14     14      1792    10.8B
    822M           16     16      2048    15.3B
    1.1B           18     18      2304    20.6B
    1.5B           20     20      2560    27.4B
    2.1B           22     22      2816    36.9B

head_dim 128 throughout, multi-head attention (kv heads = heads). The paper does
not give the MLP width: we pick, per size, the SwiGLU width (a multiple of 128)
whose non-embedding count is closest to the published one, which lands every
size within 2% of the table. Budgets use the paper's convention, 6ND with N the
non-embedding parameters, for both arms (so MoBA gets no credit for skipped
attention); that reproduces the paper's axis, 0.41 to 5.38 PFLOP/s-days. The
tokenizer is our byte-level one (vocabulary 259): the embedding size differs
from the paper's, the non-embedding model does not. Global batch and learning
rates are our choices (the paper does not list them): 128 x 8192 tokens per
step, lr from 3e-4 (smallest) to 1.5e-4 (largest).
"""
import ml_collections

from configs import lm

TABLE1 = (  # name, target non-embedding params, heads = layers, hidden, tokens
    ("545m", 545e6, 14, 1792, 10.8e9),
    ("822m", 822e6, 16, 2048, 15.3e9),
    ("1100m", 1.1e9, 18, 2304, 20.6e9),
    ("1500m", 1.5e9, 20, 2560, 27.4e9),
    ("2100m", 2.1e9, 22, 2816, 36.9e9),
)
HEAD_DIM = 128
LRS = (3e-4, 2.5e-4, 2e-4, 1.75e-4, 1.5e-4)


def mha_params(d: int, heads: int) -> int:
    """One multi-head attention layer: W_q, W_k, W_v, W_o (heads * head_dim = d)."""
    del heads
    return 4 * d * d


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.base = lm.base_config()
    c.base.train.update(seq_len=8192, global_batch=128, warmup_frac=0.01, log_every=50,
                        checkpoint_every=1000)
    c.base.eval.update(points=24, batches=16)
    c.budget_convention = "6nd"
    c.grid = False
    moba = dict(block_size=512, top_k=3, implementation="pallas")
    c.arm_defs = ml_collections.ConfigDict(dict(
        full=dict(attention_pattern="full"),
        moba=dict(attention_pattern="moba", attention=dict(moba=moba)),
        moba_last3_full=dict(attention_pattern="moba", full_attention_last_n=3,
                             attention=dict(moba=moba), display_name="MoBA (last 3 layers full)"),
        moba_switch90=dict(attention_pattern="moba", attention=dict(moba=moba),
                           train=dict(switch_to_full_at=0.9),
                           display_name="MoBA, full for the last 10%"),
    ))
    c.arms = "full,moba"
    sizes, budgets = lm.paper_sizes(TABLE1, LRS, HEAD_DIM, mha_params)
    c.size_defs = ml_collections.ConfigDict(sizes)
    c.sizes = ",".join(sizes)
    c.budgets = ",".join(f"{b:.6g}" for b in budgets)
    return c
