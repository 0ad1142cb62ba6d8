"""Dense MoBA reference: every (query, key) pair scored, an additive mask applied.

This is the oracle the fast paths are tested against.  Its memory and time grow
like ``T^2``; use it only at small ``T``.  Block selection here uses a rank test
(a block is kept when fewer than ``top_k - 1`` past blocks beat it, ties going to
the lower index) rather than ``lax.top_k``, so it checks the fast paths' routing
instead of sharing it.  Gradients come from plain autodiff.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.moba import selection


def selected_block_mask(q_BSHD: jax.Array, k_BTHD: jax.Array, *, block_size: int,
                        top_k: int, q_positions_S: jax.Array | None = None) -> jax.Array:
    """``[B, S, Hq, N]`` bool: block ``i`` is attended by query ``s`` of query head ``h``.

    Queries sit at ``q_positions_S`` (default ``0 .. S-1``, the training case where
    queries and keys are the same ``T`` tokens); a decoder passes the positions of its
    new tokens and the whole key cache, whose complete past blocks are what the rank
    test sees. A query at position ``t`` keeps its current block ``t // block_size``
    and the past blocks (``i < t // block_size``) that fewer than ``top_k - 1`` other
    past blocks outrank (higher gate; ties to the lower index).
    """
    s_len = q_BSHD.shape[1]
    n = selection.num_blocks(k_BTHD.shape[1], block_size)
    if q_positions_S is None:
        q_positions_S = jnp.arange(s_len)
    gates_BSHN = selection.gate_scores(q_BSHD, k_BTHD, block_size)
    blk_N = jnp.arange(n)
    current_S1 = (q_positions_S // block_size)[:, None]
    past_BSHN = (blk_N[None, :] < current_S1)[None, :, None, :]
    # beats[..., i, j]: past block j outranks past block i.
    g_i = gates_BSHN[..., :, None]
    g_j = gates_BSHN[..., None, :]
    beats = (g_j > g_i) | ((g_j == g_i) & (blk_N[None, :] < blk_N[:, None]))
    beats &= past_BSHN[..., None, :]
    rank_BSHN = beats.sum(axis=-1)
    chosen_past = past_BSHN & (rank_BSHN < top_k - 1)
    return chosen_past | (blk_N[None, :] == current_S1)[None, :, None, :]


def moba_attention_reference(q_BTHD: jax.Array, k_BTHD: jax.Array, v_BTHD: jax.Array, *,
                             block_size: int, top_k: int, scale: float) -> jax.Array:
    """MoBA by brute force; see ``kernels/moba/__init__.py`` for the semantics."""
    b, t, hq, d = q_BTHD.shape
    hkv = k_BTHD.shape[2]
    r = hq // hkv
    blocks_BTHN = selected_block_mask(q_BTHD, k_BTHD, block_size=block_size, top_k=top_k)
    key_block_S = jnp.arange(t) // block_size
    allowed_BTHS = jnp.take(blocks_BTHN, key_block_S, axis=-1)
    allowed_BTHS &= (jnp.arange(t)[None, :] <= jnp.arange(t)[:, None])[None, :, None, :]
    bias_BTHS = jnp.where(allowed_BTHS, 0.0, -jnp.inf).astype(jnp.float32)

    q_BTGRD = q_BTHD.astype(jnp.float32).reshape(b, t, hkv, r, d)
    logits_BTGRS = jnp.einsum("btgrd,bsgd->btgrs", q_BTGRD, k_BTHD.astype(jnp.float32),
                              precision=jax.lax.Precision.HIGHEST) * scale
    logits_BTGRS += bias_BTHS.reshape(b, t, hkv, r, t)
    probs_BTGRS = jax.nn.softmax(logits_BTGRS, axis=-1)
    out_BTGRD = jnp.einsum("btgrs,bsgd->btgrd", probs_BTGRS, v_BTHD.astype(jnp.float32),
                           precision=jax.lax.Precision.HIGHEST)
    return out_BTGRD.reshape(b, t, hq, d).astype(q_BTHD.dtype)
