"""The Kimi Linear paper's scaling-law sweep (MLA vs the 3:1 KDA/MLA hybrid, both MoE).

Plan only (per run: total and activated non-embedding parameters, tokens, FLOPs,
PFLOP/s-days; runs on a laptop)::

    python -m experiments.sweep --config=configs/kimi_linear_paper.py --dry_run

Train it on a pod (bring your own data, see moba_jax/data/config.py)::

    python -m experiments.sweep --config=configs/kimi_linear_paper.py --workdir=gs://... \\
        --config.base.data.source=array_record --config.base.data.path=/data/tokens \\
        --config.base.mesh.fsdp=8

What follows the paper (Kimi Team, "Kimi Linear: An Expressive, Efficient
Attention Architecture", arXiv 2510.26692, the technical report in
github.com/MoonshotAI/Kimi-Linear), in :data:`TABLE` and the constants below it:

- Table 2, per size: activated non-embedding parameters, heads = layers, hidden
  width, training tokens, learning rate and global batch (sequences); its
  footnote: a 4,096-token context for every model;
- section 5.3: mixture-of-experts models "following Moonlight", 8 of 64 experts
  activated, the Muon optimizer; five MLA sizes, and Kimi Linear as the 3:1
  KDA:MLA hybrid trained with the MLA configuration unchanged (same sizes,
  learning rates, batches and tokens: here both arms share each size's
  ``size_defs`` and ``tokens``); the hybrid's MLA layers without positions
  (NoPE, section 4);
- section 4: KDA key and value heads of 128 in all experiments.

Everything else is ours, in one place, :data:`OUR_CHOICES`, each with its
reason. The expert width is the one number fitted: per size, the multiple of 16
whose MLA-arm activated count is closest to Table 2's. Sizes (``python -c "from
configs import kimi_linear_paper as k; print(k.size_table())"``)::

    size    paper   expert  MLA activated   MLA total       hybrid activated  hybrid total
    653m    653M    960     649,891,968     3,591,639,168   671,723,328       3,613,470,528
    878m    878M    1008    875,041,568     4,836,336,416   911,441,820       4,872,736,668
    1100m   1.1B    1008    1,104,749,248   6,046,884,544   1,157,313,388     6,099,448,684
    1400m   1.4B    1088    1,393,879,072   7,658,252,320   1,466,652,502     7,731,025,750
    1700m   1.7B    1104    1,700,652,464   9,276,812,720   1,796,743,520     9,372,903,776

The MLA arm is within 0.5% of the table (tests/test_kimi_paper_config.py
checks 1%). A KDA layer holds more parameters than an MLA layer at these shapes,
so the hybrid's activated count is 3% to 6% larger; with equal tokens its 6ND
budget is larger by as much. 18 and 22 layers are not multiples of 4: the
pattern is cycled and its last repetition cut short (14 KDA + 4 MLA, 17 + 5).
Budgets: 6ND with N the activated non-embedding parameters and D Table 2's
tokens (the same for both arms). Table 2's own N and D give 1.76 to 15.1
PFLOP/s-days, the span of the paper's Figure 5; our MLA arm sits at 1.75 to
15.1 (``--dry_run`` prints both arms).
"""
import copy

import ml_collections

from configs import lm
from moba_jax import accounting

# --- From the paper ---------------------------------------------------------------------
# Table 2: name, activated non-embedding parameters, heads = layers, hidden, tokens,
# learning rate, global batch (sequences of SEQ_LEN tokens).
TABLE = (
    ("653m", 653e6, 16, 1216, 38.8e9, 2.006e-3, 336),
    ("878m", 878e6, 18, 1376, 59.8e9, 1.790e-3, 432),
    ("1100m", 1.1e9, 20, 1536, 85.2e9, 1.617e-3, 512),
    ("1400m", 1.4e9, 22, 1632, 102.5e9, 1.486e-3, 576),
    ("1700m", 1.7e9, 24, 1776, 128.0e9, 1.371e-3, 640),
)
SEQ_LEN = 4096                 # Table 2, footnote
N_EXPERTS, TOP_K = 64, 8       # section 5.3: 8 of 64 experts activated
OPTIMIZER = "muon"             # section 5.3
HYBRID_PATTERN = "kda,kda,kda,mla"   # 3 KDA : 1 MLA (sections 4 and 5.2, Table 1)
HEAD_DIM = 128                 # section 4: KDA key / value head dimension

# --- What the paper leaves open: our choices, all of them here --------------------------
OUR_CHOICES = dict(
    # Section 5.3 says "8 out of 64 experts" but not whether a shared expert is among
    # them; the released production model (section 5.4) routes 8 and adds 1 shared
    # expert, and so do we.
    n_shared=1,
    # Section 5.4: the production model's first layer is dense (first_k_dense_replace=1
    # in the released configs); its width is that of the activated experts together,
    # (TOP_K + n_shared) x expert width, as in the released Kimi Linear config
    # (9216 = 9 x 1024).
    first_k_dense=1,
    # The expert width is not published: per size, the multiple of this whose MLA-arm
    # activated count is closest to Table 2's.
    expert_dim_multiple=16,
    # Routing as DeepSeek-V3 / Moonlight / the released Kimi Linear configs: sigmoid
    # scores, normalised top-k gates scaled by routed_scaling_factor 2.446, the
    # loss-free balancing bias (gamma 1e-3) and the sequence-wise balance loss (1e-4).
    moe=dict(score="sigmoid", normalize=True, route_scale=2.446, bias_update_rate=1e-3,
             aux_loss_coef=1e-4, implementation="ragged"),
    # MLA shapes of Moonlight and the released Kimi Linear config: a 512-wide kv latent,
    # 64-wide decoupled key, 128-wide heads, direct (full-rank) queries. The all-MLA
    # baseline rotates the decoupled part (the paper does not say; it has no other
    # source of position); the hybrid's MLA is NoPE (the paper's).
    mla=dict(kv_latent_dim=512, rope_dim=64, q_latent_dim=0, implementation="xla"),
    mla_arm_rope=True,
    # KDA's short convolution: width 4 as the released config (the paper: "e.g., 4").
    kda=dict(chunk_size=64, conv_size=4, implementation="pallas"),
    # Section 5.3 names no schedule for the scaling runs: warmup-stable-decay as the
    # paper's pre-training recipe (section 5.4.1) and Moonlight; the warm-up, decay
    # share and final fraction, weight decay 0.1 and Muon's update RMS 0.2 (Moonlight's
    # AdamW-matched scale, so Table 2's learning rates apply to AdamW's parameters
    # too), gradient clipping at 1: ours.
    train=dict(schedule="wsd", warmup_frac=0.01, decay_frac=0.2,
               final_lr_frac=0.1, weight_decay=0.1, muon_rms=0.2, grad_clip=1.0),
    # The paper does not name its FLOP convention: 6ND with activated N puts Table 2's
    # runs at Figure 5's 1.76 to 15.1 PFLOP/s-days (shared/design/scaling.md).
    budget_convention="6nd",
    # Our byte-level vocabulary (259): the embedding differs from the paper's, the
    # non-embedding model does not.
)


def arm_defs() -> dict:
    """The two arms: every layer MLA, and the 3:1 KDA/MLA hybrid."""
    mla = OUR_CHOICES["mla"]
    return dict(
        mla=dict(attention_pattern="mla",
                 attention=dict(mla=dict(mla, rope=OUR_CHOICES["mla_arm_rope"]))),
        kimi_linear=dict(attention_pattern=HYBRID_PATTERN,
                         attention=dict(kda=OUR_CHOICES["kda"],
                                        mla=dict(mla, rope=False)),
                         display_name="Kimi Linear"),
    )


def shape(layers: int, d: int, expert_dim: int) -> dict:
    """Model fields of one size (heads = layers, as Table 2)."""
    width = (TOP_K + OUR_CHOICES["n_shared"]) * expert_dim      # the dense first layer
    return dict(d_model=d, n_layers=layers, n_heads=layers, n_kv_heads=layers,
                head_dim=HEAD_DIM, mlp_dim=width, moe=dict(expert_dim=expert_dim))


def arm_model(base_model, arm: str, layers: int, d: int, expert_dim: int):
    """``arm``'s model config at one shape (what the sweep's plan builds for it)."""
    m = copy.deepcopy(base_model)
    m.update(shape(layers, d, expert_dim))
    m.update({k: v for k, v in arm_defs()[arm].items() if k != "display_name"})
    return m


def fit_expert_dim(base_model, target: float, layers: int, d: int) -> int:
    """The expert width (a multiple of ``expert_dim_multiple``) whose MLA-arm activated
    non-embedding count is closest to ``target``; that count is linear in the width."""
    step = OUR_CHOICES["expert_dim_multiple"]

    def n(f):
        return accounting.activated_params(arm_model(base_model, "mla", layers, d, f))
    n0, n1 = n(step), n(2 * step)
    best = step + (target - n0) * step / (n1 - n0)
    return max(step, int(round(best / step)) * step)


def base_config() -> ml_collections.ConfigDict:
    base = lm.base_config()
    base.model.update(mlp_pattern="moe", first_k_dense=OUR_CHOICES["first_k_dense"])
    base.model.moe.update(OUR_CHOICES["moe"], n_experts=N_EXPERTS, top_k=TOP_K,
                          n_shared=OUR_CHOICES["n_shared"])
    base.train.update(OUR_CHOICES["train"], optimizer=OPTIMIZER, seq_len=SEQ_LEN,
                      log_every=50, checkpoint_every=1000)
    base.eval.update(points=24, batches=16)
    return base


def size_defs(base_model) -> dict:
    """Per size: the shape with its fitted expert width, and Table 2's lr and batch."""
    out = {}
    for name, target, layers, d, _, lr, batch in TABLE:
        f = fit_expert_dim(base_model, target, layers, d)
        out[name] = dict(shape(layers, d, f), train=dict(lr=lr, global_batch=batch))
    return out


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.base = base_config()
    c.budget_convention = OUR_CHOICES["budget_convention"]
    c.grid = False
    c.arm_defs = ml_collections.ConfigDict(arm_defs())
    c.arms = "mla,kimi_linear"
    c.size_defs = ml_collections.ConfigDict(size_defs(c.base.model))
    c.sizes = ",".join(row[0] for row in TABLE)
    c.budgets = ""
    c.tokens = ",".join(f"{row[4]:.6g}" for row in TABLE)   # equal data per size, both arms
    return c


def size_table() -> str:
    """The docstring's table of sizes: paper target, expert width, both arms' counts."""
    c = get_config()
    lines = [f"{'size':<8}{'paper':<8}{'expert':<8}{'MLA activated':<16}{'MLA total':<16}"
             f"{'hybrid activated':<18}hybrid total"]
    for name, target, layers, d, *_ in TABLE:
        f = int(c.size_defs[name].moe.expert_dim)
        m, h = (arm_model(c.base.model, a, layers, d, f) for a in ("mla", "kimi_linear"))
        paper = f"{target / 1e6:.0f}M" if target < 1e9 else f"{target / 1e9:.2g}B"
        lines.append(f"{name:<8}{paper:<8}{f:<8}{accounting.activated_params(m):<16,}"
                     f"{accounting.non_embedding_params(m):<16,}"
                     f"{accounting.activated_params(h):<18,}{accounting.non_embedding_params(h):,}")
    return "\n".join(lines)
