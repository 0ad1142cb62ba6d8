"""MoBA routing: pooled block keys, gate scores and the per-token block choice.

Every implementation (reference, xla, pallas) routes through the functions here
or, for the reference, through an independent rank test over the same gate
scores, so that all of them see bit-identical gates.  Routing is a discrete,
parameter-free choice: inputs are wrapped in ``stop_gradient`` and nothing
differentiable leaves this module.

Shapes: ``B`` batch, ``T`` tokens, ``Hq``/``Hkv`` query/key heads, ``R = Hq // Hkv``
query heads per kv head, ``D`` head dim, ``N = ceil(T / block_size)`` key blocks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def num_blocks(seq_len: int, block_size: int) -> int:
    return -(-seq_len // block_size)


def pooled_keys(k_BTHD: jax.Array, block_size: int) -> jax.Array:
    """Mean key of every block in float32, ``[B, N, Hkv, D]``.

    The last block may be partial; its mean is over its actual keys only.
    """
    b, t, h, d = k_BTHD.shape
    n = num_blocks(t, block_size)
    k = jax.lax.stop_gradient(k_BTHD).astype(jnp.float32)
    k = jnp.pad(k, ((0, 0), (0, n * block_size - t), (0, 0), (0, 0)))
    sums_BNHD = k.reshape(b, n, block_size, h, d).sum(axis=2)
    counts_N = jnp.minimum(block_size, t - block_size * jnp.arange(n)).astype(jnp.float32)
    return sums_BNHD / counts_N[None, :, None, None]


def gate_scores(q_BTHD: jax.Array, k_BTHD: jax.Array, block_size: int) -> jax.Array:
    """Unscaled gates ``<q_t, kbar_i>`` in float32 for every block, ``[B, T, Hq, N]``.

    Query head ``h`` is scored against the pooled keys of kv head ``h // R``.
    Entries for current and future blocks are computed too; callers mask them.
    """
    b, t, hq, d = q_BTHD.shape
    hkv = k_BTHD.shape[2]
    kbar_BNGD = pooled_keys(k_BTHD, block_size)
    q_BTGRD = jax.lax.stop_gradient(q_BTHD).astype(jnp.float32).reshape(b, t, hkv, hq // hkv, d)
    s_BTGRN = jnp.einsum("btgrd,bngd->btgrn", q_BTGRD, kbar_BNGD,
                         precision=jax.lax.Precision.HIGHEST)
    return s_BTGRN.reshape(b, t, hq, -1)


def past_block_mask(seq_len: int, block_size: int) -> jax.Array:
    """``[T, N]`` bool: block ``i`` lies strictly before token ``t``'s current block."""
    n = num_blocks(seq_len, block_size)
    current_T = jnp.arange(seq_len) // block_size
    return jnp.arange(n)[None, :] < current_T[:, None]


def select_slots(q_BTHD: jax.Array, k_BTHD: jax.Array, *, block_size: int,
                 top_k: int) -> jax.Array:
    """Blocks each (token, query head) attends to, ``[B, T, Hq, top_k]`` int32.

    Slot 0 is the current block ``t // block_size``.  Slots ``1..top_k-1`` hold the
    past blocks with the highest gates in decreasing gate order (ties: lower block
    index first, as ``lax.top_k`` guarantees).  A slot with no past block left to
    fill it (token ``t`` has only ``t // block_size`` past blocks) holds ``-1``.
    """
    b, t, hq, _ = q_BTHD.shape
    n = num_blocks(t, block_size)
    current_T = (jnp.arange(t) // block_size).astype(jnp.int32)
    current_BTH1 = jnp.broadcast_to(current_T[None, :, None, None], (b, t, hq, 1))
    n_past = min(top_k - 1, n)
    if n_past <= 0:
        return current_BTH1
    gates_BTHN = gate_scores(q_BTHD, k_BTHD, block_size)
    gates_BTHN = jnp.where(past_block_mask(t, block_size)[None, :, None, :], gates_BTHN, -jnp.inf)
    _, idx_BTHS = jax.lax.top_k(gates_BTHN, n_past)
    # Token t has exactly current(t) past blocks: slot s is filled iff s < current(t).
    filled_TS = jnp.arange(n_past)[None, :] < current_T[:, None]
    idx_BTHS = jnp.where(filled_TS[None, :, None, :], idx_BTHS.astype(jnp.int32), -1)
    slots = [current_BTH1, idx_BTHS]
    if top_k - 1 > n_past:
        slots.append(jnp.full((b, t, hq, top_k - 1 - n_past), -1, jnp.int32))
    return jnp.concatenate(slots, axis=-1)


def past_blocks_from_slots(slots_BTHK: jax.Array) -> jax.Array:
    """Selected past blocks sorted ascending, ``-1`` padding last: ``[B, T, Hq, top_k-1]``."""
    past = slots_BTHK[..., 1:]
    big = jnp.iinfo(jnp.int32).max
    past = jnp.sort(jnp.where(past < 0, big, past), axis=-1)
    return jnp.where(past == big, -1, past)
