"""The Kimi Linear paper's scaling-law sweep (MLA vs the 3:1 KDA/MLA hybrid).

Plan only (each run's non-embedding parameters, tokens, FLOPs, PFLOP/s-days)::

    python -m experiments.sweep --config=configs/kimi_linear_paper.py --dry_run

Train it on a pod (bring your own data, see moba_jax/data/config.py)::

    python -m experiments.sweep --config=configs/kimi_linear_paper.py --workdir=gs://... \\
        --config.base.data.source=array_record --config.base.data.path=/data/tokens \\
        --config.base.mesh.fsdp=8

The paper's scaling table (arXiv 2510.26692; MoE with 8 of 64 experts active,
4,096 context):

    activated non-emb.  heads = layers  hidden  tokens
    653M                16              1216    38.8B
    878M                18              1376    59.8B
    1.1B                20              1536    85.2B
    1.4B                22              1632    102.5B
    1.7B                24              1776    128.0B

Attention shapes follow Kimi Linear: head_dim 128 for KDA and MLA; MLA with a
512-wide kv latent, a 64-wide decoupled key and direct (full-rank) queries.
Arms: ``mla`` (every layer MLA, rotary on the decoupled part) and
``kimi_linear`` (``kda,kda,kda,mla`` cycled over the layers, MLA without
positions). 18 and 22 layers are not multiples of 4: the pattern is cycled and
the last repetition cut short, giving 14 KDA + 4 MLA and 17 KDA + 5 MLA.

Our MLP is dense, not a mixture of experts. Per size we pick the SwiGLU width (a
multiple of 128) whose **MLA arm** non-embedding count is closest to the
paper's *activated* count: every size lands within 0.5%. The hybrid uses the
same width; a KDA layer has more parameters than an MLA layer at these shapes
(q/k/v/o at full width plus the low-rank decay and gate, against MLA's latent
keys and values), so the hybrid's N is 3% to 6% larger:

    size     paper     MLA arm N       hybrid N        hybrid / MLA
    653m     653M      652,459,200     674,290,560     1.033
    878m     878M      874,732,256     911,132,508     1.042
    1100m    1.1B      1,104,354,816   1,156,918,956   1.048
    1400m    1.4B      1,398,577,888   1,471,351,318   1.052
    1700m    1.7B      1,704,174,576   1,800,265,632   1.056

Budgets use the paper's convention, 6ND with N the MLA arm's non-embedding
count and D the paper's tokens, the same budget for both arms at a size (the
hybrid, with its larger N, gets slightly fewer tokens). That reproduces the
paper's axis, 1.76 to 15.1 PFLOP/s-days. Vocabulary is our byte-level one; the
non-embedding model does not depend on it. Global batch (256 x 4,096 tokens)
and learning rates (3e-4 at the smallest to 1.5e-4 at the largest, the same for
both arms) are our choices; the paper does not list them in the table.
"""
import ml_collections

from configs import lm

TABLE = (  # name, activated non-embedding params, heads = layers, hidden, tokens
    ("653m", 653e6, 16, 1216, 38.8e9),
    ("878m", 878e6, 18, 1376, 59.8e9),
    ("1100m", 1.1e9, 20, 1536, 85.2e9),
    ("1400m", 1.4e9, 22, 1632, 102.5e9),
    ("1700m", 1.7e9, 24, 1776, 128.0e9),
)
HEAD_DIM = 128
MLA = dict(kv_latent_dim=512, rope_dim=64, q_latent_dim=0, implementation="xla")
KDA = dict(chunk_size=64, conv_size=4, implementation="pallas")
LRS = (3e-4, 2.5e-4, 2e-4, 1.75e-4, 1.5e-4)
SEQ_LEN = 4096


def mla_layer_params(d: int, heads: int) -> int:
    """One MLA layer at MLA's shapes (moba_jax.attention.mla.mla_params agrees)."""
    dc, dr, hd = MLA["kv_latent_dim"], MLA["rope_dim"], HEAD_DIM
    return d * heads * (hd + dr) + d * dc + dc + 2 * dc * heads * hd + d * dr + heads * hd * d


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.base = lm.base_config()
    c.base.train.update(seq_len=SEQ_LEN, global_batch=256, warmup_frac=0.01, log_every=50,
                        checkpoint_every=1000)
    c.base.eval.update(points=24, batches=16)
    c.budget_convention = "6nd"
    c.grid = False
    c.arm_defs = ml_collections.ConfigDict(dict(
        mla=dict(attention_pattern="mla", attention=dict(mla=dict(MLA, rope=True))),
        kimi_linear=dict(attention_pattern="kda,kda,kda,mla",
                         attention=dict(kda=KDA, mla=dict(MLA, rope=False)),
                         display_name="Kimi Linear"),
    ))
    c.arms = "mla,kimi_linear"
    sizes, budgets = lm.paper_sizes(TABLE, LRS, HEAD_DIM, mla_layer_params)
    c.size_defs = ml_collections.ConfigDict(sizes)
    c.sizes = ",".join(sizes)
    c.budgets = ",".join(f"{b:.6g}" for b in budgets)
    return c
