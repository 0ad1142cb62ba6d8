"""Regrouping MoBA's per-token routing into dense (row tile, key block) work items.

MoBA routes every (token, query head) to ``top_k`` key blocks, and neighbouring
tokens may pick different blocks, so a query tile cannot share one list of
blocks.  Instead we group by key block, MoE style:

1. A *row* is one (token, query head) of a kv-head group: for kv head ``g`` the
   rows are ``t * R + r`` (``R`` query heads share ``g``).  A *pair* is
   (row, slot); slot 0 is the current block, slots ``1..top_k-1`` past blocks.
2. Pairs are stably sorted by block.  Each block then owns a contiguous run
   ``[block_start, block_end)`` of the sorted list; empty slots (``-1``) are
   sent to a sentinel block ``N`` and end up last, outside every run.
3. The sorted list is cut into tiles of ``G`` rows.  A *work item* is one
   (tile, block) whose row ranges overlap; there are at most ``NT + N - 1`` of
   them (``NT`` tiles), listed in block-major order, which makes both the tile
   and the block sequence non-decreasing.  ``lo``/``hi`` give the item's rows
   inside its tile.
4. A kernel (``xla.py``, ``pallas_tpu.py``, ``pallas_gpu.py``) computes, for every
   sorted pair, the softmax statistics of its row against its block's keys
   (causally masked by the row's token position ``qpos``, which only matters in
   the current block).  Each sorted pair is valid in exactly one item.
5. ``merge_pairs`` folds a row's ``top_k`` partial results together in
   log-sum-exp space.

All index arrays are int32 and carry a leading ``BG = B * Hkv`` axis.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from kernels.moba import selection

# Every ``searchsorted`` here runs unrolled: the default ("scan") is a while loop of
# log2(n) trips, each trip its own kernel launches on a GPU; unrolled, XLA fuses the
# chain (same results, bit for bit).
_SEARCH = "scan_unrolled"


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Static sizes of a dispatch plan."""
    batch: int
    seq_len: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    top_k: int
    rows_per_tile: int

    @property
    def group(self) -> int:  # R: query heads per kv head
        return self.num_q_heads // self.num_kv_heads

    @property
    def num_blocks(self) -> int:  # N
        return selection.num_blocks(self.seq_len, self.block_size)

    @property
    def padded_len(self) -> int:  # Tp: keys padded to whole blocks
        return self.num_blocks * self.block_size

    @property
    def num_rows(self) -> int:  # T * R rows per kv head
        return self.seq_len * self.group

    @property
    def num_pairs(self) -> int:  # P
        return self.num_rows * self.top_k

    @property
    def num_tiles(self) -> int:  # NT
        return -(-self.num_pairs // self.rows_per_tile)

    @property
    def padded_pairs(self) -> int:  # Pp
        return self.num_tiles * self.rows_per_tile

    @property
    def num_items(self) -> int:  # W, static upper bound on work items
        return self.num_tiles + self.num_blocks


class Plan(NamedTuple):
    """Integer routing tables of one call (no gradients flow through these)."""
    inv_BGP: jax.Array          # sorted position of every pair (pair = row * top_k + slot)
    pair_valid_BGP: jax.Array   # bool: the slot holds a block
    row_BGPp: jax.Array         # row of every sorted position (0 on padding)
    qpos_BGPp: jax.Array        # token position of every sorted position (-1 on padding)
    block_start_BGN: jax.Array  # sorted run of each block: [start, end)
    block_end_BGN: jax.Array
    item_tile_BGW: jax.Array    # work items, block-major; padding repeats the last item
    item_block_BGW: jax.Array
    item_lo_BGW: jax.Array      # rows [lo, hi) of the tile belong to the item (lo == hi: skip)
    item_hi_BGW: jax.Array
    tile_item_start_BGNT: jax.Array  # items of each tile: [start, end)
    tile_item_end_BGNT: jax.Array


def make_plan(slots_BTHK: jax.Array, geo: Geometry) -> Plan:
    """Builds the routing tables from ``selection.select_slots`` output."""
    b, t, hq, kk = slots_BTHK.shape
    g, r, n = geo.num_kv_heads, geo.group, geo.num_blocks
    blocks = jnp.where(slots_BTHK < 0, n, slots_BTHK).reshape(b, t, g, r, kk)
    blocks_BGP = blocks.transpose(0, 2, 1, 3, 4).reshape(b * g, geo.num_pairs)
    return jax.vmap(lambda x: _plan_one(x, geo))(blocks_BGP)


def _plan_one(blocks_P: jax.Array, geo: Geometry) -> Plan:
    n, tile, kk = geo.num_blocks, geo.rows_per_tile, geo.top_k
    p, pp, nt, w = geo.num_pairs, geo.padded_pairs, geo.num_tiles, geo.num_items
    order_P = jnp.argsort(blocks_P, stable=True).astype(jnp.int32)
    sorted_blocks_P = blocks_P[order_P]
    inv_P = jnp.zeros((p,), jnp.int32).at[order_P].set(jnp.arange(p, dtype=jnp.int32))
    row_Pp = jnp.pad(order_P // kk, (0, pp - p))
    valid_Pp = jnp.pad(sorted_blocks_P < n, (0, pp - p))
    qpos_Pp = jnp.where(valid_Pp, row_Pp // geo.group, -1)

    blk_N = jnp.arange(n, dtype=jnp.int32)
    start_N = jnp.searchsorted(sorted_blocks_P, blk_N, side="left", method=_SEARCH)
    end_N = jnp.searchsorted(sorted_blocks_P, blk_N, side="right", method=_SEARCH)
    start_N, end_N = start_N.astype(jnp.int32), end_N.astype(jnp.int32)
    nonempty_N = end_N > start_N
    first_tile_N = start_N // tile
    items_N = jnp.where(nonempty_N, (end_N - 1) // tile - first_tile_N + 1, 0)
    items_end_N = jnp.cumsum(items_N).astype(jnp.int32)
    items_start_N = items_end_N - items_N
    total = items_end_N[-1]

    w_W = jnp.minimum(jnp.arange(w, dtype=jnp.int32), total - 1)  # padding repeats the last
    block_W = jnp.searchsorted(items_end_N, w_W, side="right",
                               method=_SEARCH).astype(jnp.int32)
    tile_W = first_tile_N[block_W] + (w_W - items_start_N[block_W])
    real_W = jnp.arange(w) < total
    lo_W = jnp.clip(start_N[block_W] - tile_W * tile, 0, tile)
    hi_W = jnp.clip(end_N[block_W] - tile_W * tile, 0, tile)
    lo_W = jnp.where(real_W, lo_W, 0)
    hi_W = jnp.where(real_W, hi_W, 0)

    tiles_NT = jnp.arange(nt, dtype=jnp.int32)
    real_tiles_W = jnp.where(real_W, tile_W, nt)
    tile_start = jnp.searchsorted(real_tiles_W, tiles_NT, side="left", method=_SEARCH)
    tile_end = jnp.searchsorted(real_tiles_W, tiles_NT, side="right", method=_SEARCH)
    tile_start, tile_end = tile_start.astype(jnp.int32), tile_end.astype(jnp.int32)
    return Plan(inv_P, blocks_P < n, row_Pp, qpos_Pp.astype(jnp.int32), start_N, end_N,
                tile_W.astype(jnp.int32), block_W, lo_W.astype(jnp.int32),
                hi_W.astype(jnp.int32), tile_start, tile_end)


def rows_from_heads(x_BTHD: jax.Array, num_kv_heads: int) -> jax.Array:
    """``[B, T, Hq, D] -> [BG, T*R, D]`` (row ``t * R + r`` of kv head ``g``)."""
    b, t, hq, d = x_BTHD.shape
    r = hq // num_kv_heads
    x = x_BTHD.reshape(b, t, num_kv_heads, r, d).transpose(0, 2, 1, 3, 4)
    return x.reshape(b * num_kv_heads, t * r, d)


def heads_from_rows(x_BGRowsD: jax.Array, geo: Geometry) -> jax.Array:
    """Inverse of ``rows_from_heads``."""
    b, t, g, r = geo.batch, geo.seq_len, geo.num_kv_heads, geo.group
    x = x_BGRowsD.reshape(b, g, t, r, -1).transpose(0, 2, 1, 3, 4)
    return x.reshape(b, t, g * r, -1)


def blocks_from_keys(k_BTHD: jax.Array, geo: Geometry) -> jax.Array:
    """``[B, T, Hkv, D] -> [BG, Tp, D]``, zero padded to whole blocks."""
    b, t, g, d = k_BTHD.shape
    k = jnp.pad(k_BTHD, ((0, 0), (0, geo.padded_len - t), (0, 0), (0, 0)))
    return k.transpose(0, 2, 1, 3).reshape(b * g, geo.padded_len, d)


def keys_from_blocks(k_BGTpD: jax.Array, geo: Geometry) -> jax.Array:
    b, t, g = geo.batch, geo.seq_len, geo.num_kv_heads
    k = k_BGTpD.reshape(b, g, geo.padded_len, -1)[:, :, :t]
    return k.transpose(0, 2, 1, 3)


def sort_rows(x_BGRowsX: jax.Array, plan: Plan) -> jax.Array:
    """Row-indexed values into sorted pair order, ``[BG, Pp, ...]``."""
    return jax.vmap(lambda x, i: x[i])(x_BGRowsX, plan.row_BGPp)


def unsort_pairs(x_BGPpX: jax.Array, plan: Plan, geo: Geometry) -> jax.Array:
    """Sorted pair values back to ``[BG, rows, top_k, ...]``."""
    x = jax.vmap(lambda x, i: x[i])(x_BGPpX, plan.inv_BGP)
    return x.reshape(x.shape[0], geo.num_rows, geo.top_k, *x.shape[2:])


def merge_pairs(o_BGPpD: jax.Array, lse_BGPp: jax.Array, plan: Plan,
                geo: Geometry) -> tuple[jax.Array, jax.Array]:
    """Folds each row's ``top_k`` partial softmaxes: returns ``o [BG, rows, D]``, ``lse``.

    Pair ``s`` of a row carries ``o_s`` (normalised over its block's keys) and
    ``lse_s``; the row's result is ``sum_s exp(lse_s - lse) o_s`` with
    ``lse = logsumexp_s lse_s``.  Empty slots are dropped (they may hold garbage).
    """
    valid_BGRK = plan.pair_valid_BGP.reshape(-1, geo.num_rows, geo.top_k)
    lse_BGRK = jnp.where(valid_BGRK, unsort_pairs(lse_BGPp, plan, geo), -jnp.inf)
    o_BGRKD = jnp.where(valid_BGRK[..., None], unsort_pairs(o_BGPpD, plan, geo), 0.0)
    lse_BGR = jax.nn.logsumexp(lse_BGRK, axis=-1)  # slot 0 (current block) is always valid
    w_BGRK = jnp.exp(lse_BGRK - lse_BGR[..., None])
    return jnp.einsum("grk,grkd->grd", w_BGRK, o_BGRKD), lse_BGR


def sum_pairs(x_BGPpD: jax.Array, plan: Plan, geo: Geometry) -> jax.Array:
    """Sums the ``top_k`` sorted pairs of every row (for dq): ``[BG, rows, D]``."""
    valid_BGRK = plan.pair_valid_BGP.reshape(-1, geo.num_rows, geo.top_k)
    x = jnp.where(valid_BGRK[..., None], unsort_pairs(x_BGPpD, plan, geo), 0.0)
    return x.sum(axis=2)
