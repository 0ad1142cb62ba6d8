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
