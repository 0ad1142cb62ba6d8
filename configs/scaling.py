"""The compute-matched scaling sweep.

Default (the README's main job: arms full, moba, mla and kimi_linear, 4 sizes
each, on a 2-core CPU)::

    python -m experiments.sweep --config=configs/scaling.py --workdir=runs/scaling

Plan only (parameters, tokens, FLOPs, PFLOP/s-days of every run)::

    python -m experiments.sweep --config=configs/scaling.py --dry_run

Variants: ``configs/scaling.py:tiny`` (seconds; used by the tests).
Overrides: ``--config.arms=full --config.budgets=1e11,3e11,1e12,3e12``,
``--config.base.data.source=jsonl --config.base.data.path=corpus.jsonl``,
``--config.base.mesh.fsdp=4``.

Budgets are training FLOPs in ``budget_convention`` (``"exact"`` by default,
see moba_jax/accounting.py); one budget per size, paired in order. Each run's token
count is its budget divided by its own FLOPs per token, and its learning-rate
schedule spans exactly those tokens.
"""
import ml_collections

from configs import lm


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    variant = arg or "default"
    c = ml_collections.ConfigDict()
    c.base = lm.base_config()
    c.base.train.update(seq_len=256, global_batch=8, log_every=10, checkpoint_every=50,
                        warmup_frac=0.05, lr=3e-3)
    c.base.eval.update(points=12, batches=8)
    c.budget_convention = "exact"
    c.grid = False

    # Arms: model-config overrides (plus optional train overrides). Figures and reports
    # name and colour each arm by its layers' attention kinds ("Full Attention", "MoBA",
    # "MLA"); hybrids set their own ``display_name`` (and may set a ``colour``).
    # MoBA at seq_len 256 uses 8 blocks of 32 with top-3 (current + 2 past): each
    # query attends at most 96 keys, so attention is 1 - 96/256 = 62.5% sparse at
    # the full length (moba.md's 8K/512/top-3 setting is 81.25%). The two MoBA
    # hybrids of the paper are defined too (not in the default list).
    moba = dict(block_size=32, top_k=3, implementation="xla")
    # MLA (kda.md): a 32-wide kv latent and an 8-wide decoupled key per token
    # (cache 40 numbers per layer; these models are 48-128 wide), direct queries
    # as in Kimi Linear. The all-MLA
    # arm rotates the decoupled part (it has no other source of position); the
    # Kimi Linear hybrid (3 KDA : 1 MLA, cycled over the layers, so it needs
    # n_layers >= 4) uses NoPE MLA, position coming from the KDA layers.
    mla = dict(kv_latent_dim=32, rope_dim=8, q_latent_dim=0, implementation="xla")
    kda = dict(chunk_size=64, conv_size=4, implementation="xla")
    # Mixture-of-experts MLPs (moba_jax/moe/; not in the default arms): DeepSeek-V3's
    # routing as Moonlight and Kimi Linear use it (sigmoid scores, normalised top-k
    # gates, a per-expert bias for the choice moved 1e-3 per step by the load
    # imbalance, the sequence-wise balance loss at 1e-4, the first layer dense), scaled
    # down: 8 routed experts of width mlp_dim // 3, top-2, one shared expert (the
    # papers: 64 routed, top-6, 2 shared in Moonlight; 256, top-8, 1 shared in Kimi
    # Linear). Dropless ragged_dot dispatch; on CPU "dense" is the faster
    # implementation (moba_jax/moe/layer.py).
    moe = dict(mlp_pattern="moe", first_k_dense=1,
               moe=dict(n_experts=8, top_k=2, n_shared=1, score="sigmoid", normalize=True,
                        route_scale=1.0, bias_update_rate=1e-3, aux_loss_coef=1e-4,
                        implementation="ragged"))
    c.arm_defs = ml_collections.ConfigDict(dict(
        full=dict(attention_pattern="full"),
        moba=dict(attention_pattern="moba", attention=dict(moba=moba)),
        moba_last1_full=dict(attention_pattern="moba", full_attention_last_n=1,
                             attention=dict(moba=moba), display_name="MoBA (last layer full)"),
        moba_switch90=dict(attention_pattern="moba", attention=dict(moba=moba),
                           train=dict(switch_to_full_at=0.9),
                           display_name="MoBA, full for the last 10%"),
        mla=dict(attention_pattern="mla", attention=dict(mla=dict(mla, rope=True))),
        kimi_linear=dict(attention_pattern="kda,kda,kda,mla",
                         attention=dict(kda=kda, mla=dict(mla, rope=False)),
                         display_name="Kimi Linear"),
        full_moe=dict(attention_pattern="full", **moe, display_name="Full Attention, MoE"),
        kimi_linear_moe=dict(attention_pattern="kda,kda,kda,mla",
                             attention=dict(kda=kda, mla=dict(mla, rope=False)), **moe,
                             display_name="Kimi Linear, MoE"),
    ))
    c.arms = "full,moba,mla,kimi_linear"

    # Sizes: shapes (and a per-size learning rate, chosen for all arms alike).
    # Every default size has 4 layers so the 3:1 Kimi Linear pattern is exact.
    c.size_defs = ml_collections.ConfigDict(dict(
        s1=dict(d_model=48, n_layers=4, n_heads=2, n_kv_heads=1, head_dim=24, mlp_dim=128, lr=4e-3),
        s2=dict(d_model=64, n_layers=4, n_heads=2, n_kv_heads=1, head_dim=32, mlp_dim=192, lr=3.5e-3),
        s3=dict(d_model=96, n_layers=4, n_heads=3, n_kv_heads=1, head_dim=32, mlp_dim=256, lr=3e-3),
        s4=dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=384, lr=2.5e-3),
        t1=dict(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=8, mlp_dim=48, lr=5e-3),
        t2=dict(d_model=24, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=12, mlp_dim=64, lr=5e-3),
    ))
    if variant == "default":
        c.sizes = "s1,s2,s3,s4"
        c.budgets = "1e11,2.5e11,6e11,1.6e12"
    elif variant == "tiny":
        c.arms = "full,moba"     # the tiny sizes (1-2 layers) cannot hold the 3:1 hybrid
        c.sizes = "t1,t2"
        c.budgets = "6e8,2e9"
        c.base.train.update(seq_len=64, global_batch=4, log_every=2, checkpoint_every=10,
                            progress=False)
        c.base.eval.update(points=5, batches=2)
        c.base.data.max_docs = 300
        c.arm_defs.moba.attention.moba.block_size = 16
        c.arm_defs.moba_last1_full.attention.moba.block_size = 16
        c.arm_defs.moba_switch90.attention.moba.block_size = 16
        c.arm_defs.full_moe.first_k_dense = 0    # t1 has one layer
    else:
        raise ValueError(f"configs/scaling.py: unknown variant {variant!r}; choose 'default' or 'tiny'")
    return c
