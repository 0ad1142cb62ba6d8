"""Parameter and FLOP accounting of a model config, in the conventions of scaling.md.

Every number comes from the config alone (no arrays), by summing each layer's terms:
the attention of a layer is asked through the registry (its kind's ``param_count``
and ``flops_per_token``, see ``moba_jax/attention/registry.py``), the rest (SwiGLU
MLP, norms, logits) is counted here. Conventions and units: ``moba_jax/units.py``.

A matmul ``[m, k] @ [k, n]`` is ``2 m k n`` FLOPs; embedding look-ups are free, the
output projection (logits) is not. Training = 3 x forward in the ``exact`` and
``compiled`` conventions; ``6nd`` is ``6 N`` with N the non-embedding parameters.
"""
from __future__ import annotations

from moba_jax.attention import get_attention
from moba_jax.model import layer_kinds
from moba_jax.units import CONVENTIONS, FORWARD_CONVENTIONS, check_convention


def mlp_params(cfg) -> int:
    """One SwiGLU MLP: gate, up and down projections."""
    return 3 * cfg.d_model * cfg.mlp_dim


def non_embedding_params(cfg) -> int:
    """N of the 6ND convention: all parameters but the embedding table and an
    untied output head (matches :func:`moba_jax.model.param_counts`)."""
    d = cfg.d_model
    per_layer_common = mlp_params(cfg) + 2 * d        # SwiGLU + two RMSNorm scales
    total = d                                         # final norm
    for kind in layer_kinds(cfg):
        total += per_layer_common + get_attention(kind).param_count(cfg)
    return total


def embedding_params(cfg) -> int:
    return cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)


def forward_flops_per_token(cfg, seq_len: int, convention: str = "exact") -> dict[str, float]:
    """Forward FLOPs per token, broken down into ``attention``, ``mlp``, ``logits``, ``total``."""
    if convention not in FORWARD_CONVENTIONS:
        raise ValueError(f"convention must be one of {FORWARD_CONVENTIONS} for a forward "
                         f"count, got {convention!r}")
    attn = sum(get_attention(k).flops_per_token(cfg, seq_len, convention) for k in layer_kinds(cfg))
    mlp = cfg.n_layers * 2.0 * mlp_params(cfg)
    logits = 2.0 * cfg.d_model * cfg.vocab_size
    return {"attention": attn, "mlp": mlp, "logits": logits, "total": attn + mlp + logits}


def train_flops_per_token(cfg, seq_len: int, convention: str = "exact") -> float:
    """Training (forward + backward) FLOPs per token in ``convention``."""
    check_convention(convention)
    if convention == "6nd":
        return 6.0 * non_embedding_params(cfg)
    return 3.0 * forward_flops_per_token(cfg, seq_len, convention)["total"]


def train_flops_per_token_all(cfg, seq_len: int) -> dict[str, float]:
    """``{convention: training FLOPs per token}`` for every convention."""
    return {c: train_flops_per_token(cfg, seq_len, c) for c in CONVENTIONS}
