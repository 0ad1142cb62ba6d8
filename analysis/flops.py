"""FLOP accounting for every architecture, in the conventions of scaling.md.

Conventions (``convention=`` everywhere):

- ``"6nd"``: Kaplan et al.: training FLOPs per token ``= 6 N`` with N the
  non-embedding (activated) parameters. Attention gets no credit or charge.
- ``"exact"``: every matmul the architecture *needs*, per token, at the run's
  sequence length: projections, MLP, logits, and attention over exactly the
  (query, key) pairs the mechanism requires (causal full attention:
  ``T(T+1)/2`` pairs per sequence). Training = 3 x forward.
- ``"compiled"``: what the program we actually run computes (dense attention
  computes all ``T^2`` pairs even though half are masked). This is the count
  tested against XLA's ``compiled.cost_analysis()``.

A matmul ``[m, k] @ [k, n]`` is ``2 m k n`` FLOPs; embedding look-ups are free,
the output projection (logits) is not. Each attention kind registers its own
terms with :func:`register_attention_flops`; hybrids are handled by summing
per-layer terms over the model's layer kinds.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from moba_jax.model import layer_kinds

PFLOPS_DAY = 1e15 * 86400.0  # 8.64e19 FLOPs
CONVENTIONS = ("6nd", "exact", "compiled")

# kind -> (params_fn(cfg) -> int, forward_flops_fn(cfg, seq_len, convention) -> float per token)
_ATTN: dict[str, tuple[Callable, Callable]] = {}


def register_attention_flops(kind: str, params_fn: Callable, flops_fn: Callable) -> None:
    _ATTN[kind] = (params_fn, flops_fn)


def _attn_terms(kind: str):
    if kind not in _ATTN:
        raise KeyError(f"analysis.flops: no FLOP terms registered for attention kind {kind!r}")
    return _ATTN[kind]


def to_pflops_days(flops: float) -> float:
    return flops / PFLOPS_DAY


def from_pflops_days(pfd: float) -> float:
    return pfd * PFLOPS_DAY


# --- full attention -----------------------------------------------------------

def qkvo_params(cfg) -> int:
    return cfg.d_model * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)


def qkvo_flops(cfg) -> float:
    """Per-token forward FLOPs of the q, k, v, o projections."""
    return 2.0 * qkvo_params(cfg)


def causal_pairs_per_token(seq_len: int) -> float:
    """Mean number of keys per query under a causal mask: ``(T + 1) / 2``."""
    return (seq_len + 1) / 2.0


def _full_flops(cfg, seq_len: int, convention: str) -> float:
    keys = seq_len if convention == "compiled" else causal_pairs_per_token(seq_len)
    # QK^T and PV: 2*hd each per (query head, key) pair.
    return qkvo_flops(cfg) + 4.0 * cfg.head_dim * cfg.n_heads * keys


register_attention_flops("full", qkvo_params, _full_flops)


# --- MoBA ---------------------------------------------------------------------

def moba_keys_per_token(seq_len: int, block_size: int, top_k: int) -> tuple[float, float]:
    """Exact mean over positions of (attended keys, past blocks gated) per query.

    Token ``t`` attends the ``t mod Bs + 1`` causal keys of its current block plus
    ``Bs`` keys for each of ``min(top_k - 1, c(t))`` selected past blocks, and its
    gate scores all ``c(t) = t // Bs`` past blocks.
    """
    t = np.arange(seq_len)
    c = t // block_size
    keys = (t % block_size + 1) + np.minimum(top_k - 1, c) * block_size
    return float(keys.mean()), float(c.mean())


def _moba_flops(cfg, seq_len: int, convention: str) -> float:
    o = cfg.attention.moba
    bs, k = int(o.block_size), int(o.top_k)
    hd, hq, hkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    n_blocks = -(-seq_len // bs)
    if convention == "exact":
        keys, gated = moba_keys_per_token(seq_len, bs, k)
        pooling = hd * hkv                    # one add per key element into its block mean
        return qkvo_flops(cfg) + 4.0 * hd * hq * keys + 2.0 * hd * hq * gated + pooling
    # "compiled": what our implementation computes. Every path scores each query
    # against every block's pooled key (then masks the non-past ones).
    gate = 2.0 * hd * hq * n_blocks + hd * hkv
    if o.implementation == "reference":
        return qkvo_flops(cfg) + 4.0 * hd * hq * seq_len + gate
    # Sparse paths: a static number of work items (padded to whole scan chunks),
    # each a [rows_per_tile, Bs] score tile and its PV product.
    from kernels.moba import BlockSizes
    from kernels.moba.dispatch import Geometry
    from kernels.moba.xla import _items_per_step
    geo = Geometry(1, seq_len, hq, hkv, hd, bs, k, BlockSizes().block_rows)
    per_step = _items_per_step(geo, hkv)
    items = -(-geo.num_items // per_step) * per_step
    pairs_per_token = hkv * items * geo.rows_per_tile * bs / seq_len
    return qkvo_flops(cfg) + 4.0 * hd * pairs_per_token + gate


register_attention_flops("moba", qkvo_params, _moba_flops)


# --- whole model ----------------------------------------------------------------

def non_embedding_params(cfg) -> int:
    """N of the 6ND convention: all parameters but the embedding table and an
    untied output head (matches :func:`moba_jax.model.param_counts`)."""
    d = cfg.d_model
    per_layer_common = 3 * d * cfg.mlp_dim + 2 * d   # SwiGLU + two RMSNorm scales
    total = d                                         # final norm
    for kind in layer_kinds(cfg):
        total += per_layer_common + _attn_terms(kind)[0](cfg)
    return total


def embedding_params(cfg) -> int:
    return cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)


def forward_flops_per_token(cfg, seq_len: int, convention: str = "exact") -> dict[str, float]:
    """Forward FLOPs per token, broken down into ``attention``, ``mlp``, ``logits``, ``total``."""
    if convention not in ("exact", "compiled"):
        raise ValueError(f"convention must be 'exact' or 'compiled' for a forward count, got {convention!r}")
    attn = sum(_attn_terms(k)[1](cfg, seq_len, convention) for k in layer_kinds(cfg))
    mlp = cfg.n_layers * 6.0 * cfg.d_model * cfg.mlp_dim
    logits = 2.0 * cfg.d_model * cfg.vocab_size
    return {"attention": attn, "mlp": mlp, "logits": logits, "total": attn + mlp + logits}


def train_flops_per_token(cfg, seq_len: int, convention: str = "exact") -> float:
    """Training (forward + backward) FLOPs per token in ``convention``."""
    if convention == "6nd":
        return 6.0 * non_embedding_params(cfg)
    if convention in ("exact", "compiled"):
        return 3.0 * forward_flops_per_token(cfg, seq_len, convention)["total"]
    raise ValueError(f"convention: unknown {convention!r}; choose one of {CONVENTIONS}")
