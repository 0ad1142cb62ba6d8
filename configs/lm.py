"""Single-run language-model config.

Command (trains the default ``small`` model on the embedded stdlib corpus)::

    python -m experiments.train --config=configs/lm.py --workdir=/tmp/lm_small

Variants: ``configs/lm.py:tiny`` (seconds, for tests), ``configs/lm.py:small``.
Any field can be overridden, e.g. ``--config.train.steps=500
--config.model.attention_pattern=full --config.mesh.fsdp=2``.
"""
import ml_collections

from moba_jax.data import default_data_config
from moba_jax.model import default_model_config
from moba_jax.sharding import default_rules_config

SIZES = {
    # name: d_model, n_layers, n_heads, n_kv_heads, head_dim, mlp_dim
    "tiny": dict(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=96),
    "small": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=384),
}


def train_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        seq_len=256,
        global_batch=16,
        grad_accum=1,
        lr=3e-3,
        warmup_frac=0.05,
        final_lr_frac=0.1,
        weight_decay=0.1,
        b1=0.9,
        b2=0.95,
        eps=1e-8,
        grad_clip=1.0,
        optimizer="adamw",           # or "muon" (hidden matrices; AdamW for the rest), see
        muon_beta=0.95,              #   moba_jax/train/optim.py
        muon_ns_steps=5,
        muon_rms=0.2,                # Muon update RMS matched to AdamW's (Moonlight)
        schedule="cosine",           # or "wsd" (warmup-stable-decay)
        decay_frac=0.2,              # wsd: the final share of the steps that decays
        # Exactly one of budget_flops / tokens / steps sets the run length.
        budget_flops=0.0,
        budget_convention="exact",
        tokens=0,
        steps=200,
        # MoBA hybrid recipe: from this fraction of the run on, every MoBA layer
        # runs as full attention (0 = never; the paper's recipe is 0.9).
        switch_to_full_at=0.0,
        seed=0,
        log_every=10,
        checkpoint_every=100,
        progress=True,
        tensorboard=False,           # also write metrics to RUN_DIR/tb/ (needs tensorboardX)
        peak_flops_per_device=0.0,   # 0: from the device kind when known (for MFU)
        prefetch=2,                  # batches sent to the devices ahead of their step
        async_checkpoints=True,      # written in the background (moba_jax/train/checkpointing.py)
        forbid_host_sync_between_logs=False,   # debug: a host read between log steps raises
    ))


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = default_model_config()
    c.data = default_data_config()
    c.train = train_config()
    c.eval = ml_collections.ConfigDict(dict(points=16, batches=8))
    # Logical-axis sharding rules (moba_jax/sharding.py), overridable per run, e.g.
    # --config.mesh.rules.mlp=fsdp or --config.mesh.rules.embed="" (replicated).
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1,
                                            rules=default_rules_config()))
    c.checkpoint = ml_collections.ConfigDict(dict(max_to_keep=2))
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    size = arg or "small"
    if size not in SIZES:
        raise ValueError(f"configs/lm.py: unknown variant {size!r}; choose one of {sorted(SIZES)}")
    c = base_config()
    c.model.update(SIZES[size])
    if size == "tiny":
        c.train.update(seq_len=64, global_batch=8, steps=30, log_every=5, checkpoint_every=10)
        c.eval.update(points=6, batches=2)
        c.data.max_docs = 400
    return c


def paper_sizes(table, lrs, head_dim: int, attn_params) -> tuple[dict, list[float]]:
    """Size definitions and 6ND budgets for a paper's scaling table.

    ``table`` rows are ``(name, target non-embedding params, heads = layers,
    hidden, tokens)``; ``attn_params(d, heads)`` is one attention layer's
    parameter count. Papers rarely give the MLP width, so each size gets the
    SwiGLU width (a multiple of 128) whose non-embedding count (attention +
    SwiGLU + two norms per layer, plus the final norm, as moba_jax.accounting counts)
    is closest to the target. Budgets are ``6 N D`` with that N and the table's
    tokens.
    """
    sizes, budgets = {}, []
    for (name, target, heads, d, tokens), lr in zip(table, lrs):
        per_layer = (target - d) / heads - attn_params(d, heads) - 2 * d
        mlp = int(max(128, round(per_layer / (3 * d) / 128) * 128))
        n = heads * (attn_params(d, heads) + 3 * d * mlp + 2 * d) + d
        sizes[name] = dict(d_model=d, n_layers=heads, n_heads=heads, n_kv_heads=heads,
                           head_dim=head_dim, mlp_dim=mlp, lr=lr)
        budgets.append(6.0 * n * tokens)
    return sizes, budgets
