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


# --- MLA (multi-head latent attention) ------------------------------------------

def _mla_dims(cfg):
    o = cfg.attention.mla
    return int(o.kv_latent_dim), int(o.rope_dim), int(o.q_latent_dim)


def mla_params(cfg) -> int:
    """Parameters of one MLA layer (latent projections, their norms, W_o)."""
    d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
    dc, dr, dq = _mla_dims(cfg)
    q = d * dq + dq + dq * h * (hd + dr) if dq else d * h * (hd + dr)
    kv = d * dc + dc + 2 * dc * h * hd + d * dr
    return q + kv + h * hd * d


def mla_projection_flops(cfg) -> float:
    """Per-token forward FLOPs of MLA's projections: q (direct or low-rank), the kv
    latent, the per-head key/value up-projections, the shared rope key and ``W_o``."""
    d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
    dc, dr, dq = _mla_dims(cfg)
    q = 2.0 * (d * dq + dq * h * (hd + dr)) if dq else 2.0 * d * h * (hd + dr)
    return q + 2.0 * (d * dc + 2 * dc * h * hd + d * dr) + 2.0 * h * hd * d


def _mla_flops(cfg, seq_len: int, convention: str) -> float:
    """QK^T over ``head_dim + rope_dim`` and PV over ``head_dim`` per (head, key) pair.

    "compiled": every path scores all ``T`` keys; the xla path zero-pads v to
    ``head_dim + rope_dim`` (``jax.nn.dot_product_attention`` needs one width), so its
    PV product is that wide too.
    """
    h, hd = cfg.n_heads, cfg.head_dim
    _, dr, _ = _mla_dims(cfg)
    if convention == "compiled":
        keys = seq_len
        pv = hd + dr if cfg.attention.mla.implementation == "xla" else hd
    else:
        keys, pv = causal_pairs_per_token(seq_len), hd
    return mla_projection_flops(cfg) + 2.0 * h * keys * ((hd + dr) + pv)


def mla_cache_per_token(cfg) -> int:
    """Numbers cached per token by one MLA layer when decoding: ``d_c + d_r``."""
    dc, dr, _ = _mla_dims(cfg)
    return dc + dr


register_attention_flops("mla", mla_params, _mla_flops)


# --- KDA (Kimi Delta Attention) -------------------------------------------------

KDA_SUB_CHUNK = 16   # kernels/kda/chunked.py: block size of the triangular inverse


def kda_params(cfg) -> int:
    """Parameters of one KDA layer: W_q, W_k, W_v, three short convs, the low-rank
    decay and gate projections, A_log, dt_bias, W_beta, the output norm, W_o."""
    d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
    conv = int(cfg.attention.kda.conv_size)
    return (3 * d * h * hd + 3 * conv * h * hd + 2 * (d * hd + hd * h * hd)
            + h + h * hd + d * h + hd + h * hd * d)


def kda_projection_flops(cfg) -> float:
    """Per-token forward FLOPs around the recurrence: q/k/v/o projections, the short
    convolutions (one multiply-add per tap and channel), the low-rank decay and gate
    and the beta projection."""
    d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
    conv = int(cfg.attention.kda.conv_size)
    return (2.0 * 4 * d * h * hd + 2.0 * 3 * conv * h * hd
            + 2.0 * 2 * (d * hd + hd * h * hd) + 2.0 * d * h)


def kda_core_exact_per_token(head_dim: int, chunk: int, seq_len: int) -> float:
    """kda.md's cost of the chunked algorithm per head: ``6 T d^2 + 3 T C d + T C^2``
    per sequence, here per token; a sequence shorter than a chunk is one chunk of T."""
    c = min(chunk, seq_len)
    return 6.0 * head_dim ** 2 + 3.0 * c * head_dim + c * c


def kda_chunk_compiled(c: int, k: int, s: int = KDA_SUB_CHUNK) -> dict[str, float]:
    """FLOPs of one chunk and head of ``kernels.kda.chunked.kda_chunked``'s forward
    (K = V = k) on its usual branch, where each chunk's decayed score matrices are one
    factorised product (leaf = the whole chunk; the branches for strong decays compute
    less, and XLA's cost analysis also counts a conditional as its largest branch):

    - ``parallel``: everything batched over chunks: the q scaling, the in-chunk
      cumulative sum of g (a product with a ``C x C`` triangle of ones, ``2 C^2 K``),
      both score matrices (``4 C^2 K``) with their factors and masks, the blocked
      inverse ``(I + beta Akk)^-1`` (16 x 16 diagonal blocks by row updates, then block
      rows), ``W`` and ``U`` (``4 C^2 K``) and the output ``(e^G q) S + Aqk Vn``;
    - ``scan``: one step of the sequential scan over chunks (``W S`` and ``Kg^T Vn``
      and the element-wise updates). XLA counts a loop body once, whatever its trip
      count.
    """
    ns = c // s
    scores = 4 * c * c * k + 6 * c * k + 2 * c * c
    inverse = ((s - 1) * ns * (2 * s * s + s)
               + sum(2 * s * (a * s) * c + 2 * s * s * c + s * c for a in range(1, ns)))
    intra = c * c + 4 * c * c * k + 4 * c * k         # beta Akk; W, U; their right sides
    decays = 4 * c * k                                  # G_last - G, e^G q, e^.. k
    output = 2 * c * k * k + 2 * c * c * k + c * k
    parallel = k * c + 2 * c * c * k + scores + inverse + intra + decays + output
    scan = 4 * c * k * k + c * k + 2 * k * k
    return {"parallel": float(parallel), "scan": float(scan)}


def kda_core_compiled_per_token(cfg, seq_len: int) -> float:
    """Per-token FLOPs of the recurrence as the configured path computes it (all heads)."""
    o = cfg.attention.kda
    h, k = cfg.n_heads, cfg.head_dim
    if o.implementation == "reference":
        # Token scan: decay, S^T k, delta update (outer product), S^T q.
        return h * (2.0 * k * k + 2.0 * k * k + 3.0 * k * k + 2.0 * k * k)
    c = int(o.chunk_size)
    n = -(-seq_len // c)
    per_chunk = sum(kda_chunk_compiled(c, k).values())
    return h * n * per_chunk / seq_len


def _kda_flops(cfg, seq_len: int, convention: str) -> float:
    if convention == "compiled":
        core = kda_core_compiled_per_token(cfg, seq_len)
    else:
        core = cfg.n_heads * kda_core_exact_per_token(
            cfg.head_dim, int(cfg.attention.kda.chunk_size), seq_len)
    return kda_projection_flops(cfg) + core


def kda_uncounted_by_xla(cfg, seq_len: int) -> float:
    """Per-token FLOPs of the "compiled" KDA count that XLA's CPU cost analysis does
    not see: the scan body beyond its first trip. Used by the FLOP tests to compare
    like with like; see ``kda_chunk_compiled``. This holds while the sequence runs as
    one segment (``kernels.kda.chunked.num_segments``: up to about 1 MiB per q-sized
    float32 tensor, batch x seq_len x heads x head_dim x 4 bytes); a longer input runs
    as s segments, each with its own scan, and XLA then sees s trips."""
    o = cfg.attention.kda
    if o.implementation != "xla":
        raise ValueError("kda_uncounted_by_xla describes the chunked 'xla' path only")
    c = int(o.chunk_size)
    n = -(-seq_len // c)
    terms = kda_chunk_compiled(c, cfg.head_dim)
    return cfg.n_heads * (n - 1) * terms["scan"] / seq_len


register_attention_flops("kda", kda_params, _kda_flops)
