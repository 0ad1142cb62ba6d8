"""MoBA in dense per-block tiles (``implementation="blocked"``): the fast exact path on CPU.

The two parts of a query's softmax are computed apart and merged in log-sum-exp space:

1. *Current block*, causal: the ``Bs`` queries of block ``i`` times the ``R = Hq / Hkv``
   query heads of a key head are one ``[R * Bs, Bs]`` score tile against block ``i``'s
   keys (row ``t * R + r``), computed for all blocks as one batched product: no routing.
2. *Selected past blocks*: the ``top_k - 1`` (row, slot) pairs of every row are sorted
   by block (one ``lax.sort`` of ``block * P + pair``, which is stable by construction)
   and each block's run is padded to whole tiles of ``G = tile_rows`` rows, so every tile
   belongs to exactly one key block (a "padded per expert" MoE layout). A tile is then a
   plain ``[G, D] x [D, Bs]`` product with no mask: every key of a past block precedes
   the query. The number of tiles has a static bound, ``ceil((V + (N - 1)(G - 1)) / G)``
   for ``V`` valid pairs (a fixed count: token ``t`` has ``min(top_k - 1, t // Bs)``).

Tiles gather their query rows (forward) and their ``dO``, ``lse``, ``delta`` rows
(backward); the results come back per pair by a gather through each pair's position.
Backward is FlashAttention's (``P = exp(S - lse)`` from the saved final ``lse``,
``delta = rowsum(dO * O)``); the past tiles' ``dk``/``dv`` are summed into their key
blocks by one sorted scatter-add of whole tiles (on CPU as fast as a one-hot product
over tiles, whose cost would grow like ``T^2``). Work is ``(T R Bs + #tiles G Bs) D``
per key head, linear in ``T``. Current blocks and past tiles go in ``lax.scan`` chunks
of at most ``_CHUNK_SCORE_ELEMENTS`` scores per (batch row, key head); at the
replication's shapes (T = 1024, block 64) each part is one chunk, run inline.

Measured on the 2-core CPU (busy), replication model r3 (B = 4, T = 1024, 2 query heads
on 1 key head of 32, block 64, top-3), one layer's forward+backward: 20 ms against 40 ms
for ``"xla"``; the whole train step 398 ms against 428 ms (full attention, blocked
path: 626 ms), all interleaved in one process.

Shapes: ``BG = B * Hkv``; rows ``t * R + r`` of a key head; ``N`` key blocks, ``Tp = N
* Bs``; ``S = top_k - 1`` past slots; ``M`` past tiles; ``X = M * G`` tile rows.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from kernels.moba import selection

_F32 = jnp.float32
_HI = jax.lax.Precision.HIGHEST
# Rows of one past tile (a multiple of 8).
DEFAULT_TILE_ROWS = 64
# Upper bound on the score elements per (batch row, key head) of one chunk of tiles.
_CHUNK_SCORE_ELEMENTS = 1 << 20


def _dot(spec, a, b):
    return jnp.einsum(spec, a, b, preferred_element_type=_F32, precision=_HI)


def valid_past_pairs(seq_len: int, block_size: int, top_k: int) -> int:
    """(token, slot) pairs holding a past block, per query head: ``sum_t min(top_k - 1,
    t // Bs)``."""
    t = np.arange(seq_len)
    return int(np.minimum(top_k - 1, t // block_size).sum())


def num_past_tiles(seq_len: int, group: int, block_size: int, top_k: int,
                   tile_rows: int) -> int:
    """Static bound on the past tiles of one key head: every block's run of pairs padded
    to whole tiles (only blocks ``0 .. N - 2`` can be a past block)."""
    valid = group * valid_past_pairs(seq_len, block_size, top_k)
    if valid == 0:
        return 0
    n_past = selection.num_blocks(seq_len, block_size) - 1
    return -(-(valid + n_past * (tile_rows - 1)) // tile_rows)


def past_layout(seq_len: int, group: int, block_size: int, top_k: int,
                tile_rows: int) -> tuple[int, int]:
    """``(steps, tiles per step)`` of the past tiles: the static bound of
    :func:`num_past_tiles` cut into ``lax.map`` steps whose scores stay under the bound
    (the last step padded with unused tiles)."""
    return _chunking(num_past_tiles(seq_len, group, block_size, top_k, tile_rows),
                     tile_rows * block_size)


def scored_pairs_per_token(seq_len: int, num_q_heads: int, num_kv_heads: int,
                           block_size: int, top_k: int,
                           tile_rows: int = DEFAULT_TILE_ROWS) -> float:
    """(query-head row, key) pairs scored per token, summed over heads: the current
    blocks' whole ``[R Bs, Bs]`` tiles (padded to whole blocks) and every past tile the
    path computes, unused rows and tiles included (for one sequence)."""
    r = num_q_heads // num_kv_heads
    n = selection.num_blocks(seq_len, block_size)
    steps, per_step = past_layout(seq_len, r, block_size, top_k, tile_rows)
    cur_steps, cur_per_step = _chunking(n, r * block_size * block_size)
    per_head = (cur_steps * cur_per_step * r * block_size * block_size
                + steps * per_step * tile_rows * block_size)
    return num_kv_heads * per_head / seq_len


def _chunking(count: int, elements_per_item: int) -> tuple[int, int]:
    """``(steps, items per step)`` so that one step's scores stay under the bound."""
    if count == 0:
        return 0, 0
    per_step = max(1, min(count, _CHUNK_SCORE_ELEMENTS // elements_per_item))
    steps = -(-count // per_step)
    return steps, -(-count // steps)


class Plan(NamedTuple):
    """Routing of the past pairs (integers; no gradients)."""
    tile_block_BGM: jax.Array  # key block of each past tile (N: an unused tile)
    pos_row_BGX: jax.Array     # query row of each tile row (-1: empty)
    pair_pos_BGP: jax.Array    # tile row of each (row, slot) pair (-1: empty slot)


def make_plan(past_BTHS: jax.Array, num_kv_heads: int, block_size: int, tile_rows: int,
              num_tiles: int) -> Plan:
    """The plan from the past slots of ``selection.select_slots`` (``-1``: empty)."""
    b, t, hq, s = past_BTHS.shape
    g, r = num_kv_heads, hq // num_kv_heads
    n = selection.num_blocks(t, block_size)
    p = t * r * s
    blocks_BGP = past_BTHS.reshape(b, t, g, r, s).transpose(0, 2, 1, 3, 4).reshape(b * g, p)
    return jax.vmap(lambda x: _plan_one(x, n, s, tile_rows, num_tiles))(blocks_BGP)


def _plan_one(blocks_P, n, s, gt, m):
    p = blocks_P.shape[0]
    if (n + 1) * p < 2 ** 31:
        key = jnp.where(blocks_P >= 0, blocks_P, n) * p + jnp.arange(p, dtype=jnp.int32)
        skey = jax.lax.sort(key)
        order_P, sblock_P = skey % p, skey // p
    else:                              # keys would overflow int32: a stable argsort
        order_P = jnp.argsort(jnp.where(blocks_P >= 0, blocks_P, n), stable=True)
        sblock_P = jnp.where(blocks_P >= 0, blocks_P, n)[order_P]
    order_P = order_P.astype(jnp.int32)
    bounds = jnp.searchsorted(sblock_P, jnp.arange(n + 1), side="left").astype(jnp.int32)
    start_N, count_N = bounds[:-1], bounds[1:] - bounds[:-1]
    tiles_N = -(-count_N // gt)
    tend_N = jnp.cumsum(tiles_N).astype(jnp.int32)
    tstart_N = tend_N - tiles_N
    # Sorted pair i of block j sits at tile row tstart_j * G + (i - start_j).
    j_P = jnp.minimum(sblock_P, n - 1)
    pos_sorted = jnp.where(sblock_P < n, tstart_N[j_P] * gt - start_N[j_P]
                           + jnp.arange(p, dtype=jnp.int32), -1)
    pair_pos = jnp.zeros((p,), jnp.int32).at[order_P].set(pos_sorted, unique_indices=True)
    tile_block = jnp.searchsorted(tend_N, jnp.arange(m), side="right").astype(jnp.int32)
    tb = jnp.minimum(tile_block, n - 1)
    rank = ((jnp.arange(m, dtype=jnp.int32) - tstart_N[tb])[:, None] * gt
            + jnp.arange(gt, dtype=jnp.int32)[None, :])
    ok = (tile_block < n)[:, None] & (rank < count_N[tb][:, None])
    sidx = jnp.clip(start_N[tb][:, None] + rank, 0, p - 1)
    pos_row = jnp.where(ok, order_P[sidx] // s, -1).reshape(-1)
    return Plan(tile_block, pos_row, pair_pos)


# --- layouts ------------------------------------------------------------------------

def _rows(x_BTHD, g):
    """``[B, T, Hq, D] -> [BG, T*R, D]`` (row ``t * R + r`` of key head ``g``)."""
    b, t, hq, d = x_BTHD.shape
    x = x_BTHD.reshape(b, t, g, hq // g, d).transpose(0, 2, 1, 3, 4)
    return x.reshape(b * g, t * (hq // g), d)


def _heads(x_BGRowsD, b, t, g):
    """Inverse of :func:`_rows`."""
    x = x_BGRowsD.reshape(b, g, t, -1, x_BGRowsD.shape[-1]).transpose(0, 2, 1, 3, 4)
    return x.reshape(b, t, -1, x.shape[-1])


def _blocks(x_BGLX, n, rows_per_block, fill=0.0):
    """``[BG, L, ...] -> [BG, n, rows_per_block, ...]``, padded with ``fill`` at the end."""
    pad = n * rows_per_block - x_BGLX.shape[1]
    x = jnp.pad(x_BGLX, [(0, 0), (0, pad)] + [(0, 0)] * (x_BGLX.ndim - 2),
                constant_values=fill)
    return x.reshape(x.shape[0], n, rows_per_block, *x.shape[2:])


def _pad_to(x_BGLX, length):
    """Zero-pads axis 1 to ``length``."""
    return jnp.pad(x_BGLX, [(0, 0), (0, length - x_BGLX.shape[1])] + [(0, 0)] * (x_BGLX.ndim - 2))


def _gather_rows(x_BGLX, idx_BG_):
    """``x[bg, idx]`` for an index array ``[BG, ...]`` (clipped to valid rows)."""
    lead = idx_BG_.shape
    idx = jnp.clip(idx_BG_, 0, x_BGLX.shape[1] - 1).reshape(lead[0], -1)
    idx = idx.reshape(idx.shape + (1,) * (x_BGLX.ndim - 2))
    out = jnp.take_along_axis(x_BGLX, idx, axis=1, mode="promise_in_bounds")
    return out.reshape(lead + x_BGLX.shape[2:])


def _chunks(x, steps):
    """``[BG, steps * c, ...] -> [steps, BG, c, ...]``."""
    return jnp.moveaxis(x.reshape(x.shape[0], steps, -1, *x.shape[2:]), 1, 0)


def _unchunks(x):
    """Inverse of :func:`_chunks`."""
    x = jnp.moveaxis(x, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _scan(fn, steps, carry, xs):
    """``fn(carry, *chunk) -> (carry, ys)`` over the chunks of ``xs`` (arrays ``[BG, steps
    * c, ...]``); ``ys`` come back as ``[BG, steps * c, ...]``. One step runs inline."""
    if steps == 1:
        return fn(carry, *xs)
    carry, ys = jax.lax.scan(lambda c, a: fn(c, *a), carry, [_chunks(x, steps) for x in xs])
    return carry, jax.tree.map(_unchunks, ys)


def _causal(r, bs):
    """``[R*Bs, Bs]``: row ``t * R + r`` of a block sees its keys ``<= t``."""
    return jnp.arange(bs)[None, :] <= (jnp.arange(r * bs) // r)[:, None]


class _Dims(NamedTuple):
    b: int
    t: int
    g: int
    r: int
    bs: int
    n: int
    cur_steps: int
    past_steps: int
    past_tiles: int
    tile_rows: int


def _dims(q, k, block_size, top_k, tile_rows) -> _Dims:
    b, t, hq, _ = q.shape
    g = k.shape[2]
    r = hq // g
    n = selection.num_blocks(t, block_size)
    cur_steps, _ = _chunking(n, r * block_size * block_size)
    steps, per_step = past_layout(t, r, block_size, top_k, tile_rows)
    return _Dims(b, t, g, r, block_size, n, cur_steps, steps, steps * per_step, tile_rows)


# --- forward ------------------------------------------------------------------------

def _softmax_tile(s, v, scale):
    """Unscaled scores ``s`` (``-inf`` masked; every row has a key) -> the block-normalised
    ``o`` and ``lse`` of ``softmax(scale * s)`` (f32). For ``scale > 0`` the row maximum
    of ``s`` gives that of ``scale * s``, and the scaling fuses into the exponential."""
    if scale <= 0:
        s, scale = s * scale, 1.0
    m = s.max(axis=-1, keepdims=True)
    p = jnp.exp((s - m) * scale)
    l = p.sum(axis=-1, keepdims=True)
    o = _dot("bnqk,bnkd->bnqd", p.astype(v.dtype), v) / l
    return o, (m * scale + jnp.log(l))[..., 0]


def _forward(q, k, v, block_size, top_k, scale, tile_rows):
    dm = _dims(q, k, block_size, top_k, tile_rows)
    b, t, g, r, bs, n = dm.b, dm.t, dm.g, dm.r, dm.bs, dm.n
    q_rows = _rows(q, g)
    k_blk, v_blk = _blocks(_rows(k, g), n, bs), _blocks(_rows(v, g), n, bs)
    causal = _causal(r, bs)
    cur_n = dm.cur_steps * -(-n // dm.cur_steps)

    def current(_, q_c, k_c, v_c):
        s = jnp.where(causal, _dot("bnqd,bnkd->bnqk", q_c, k_c), -jnp.inf)
        return None, _softmax_tile(s, v_c, scale)

    _, (o_cur, lse_cur) = _scan(current, dm.cur_steps, None,
                                [_blocks(q_rows, cur_n, r * bs), _pad_to(k_blk, cur_n),
                                 _pad_to(v_blk, cur_n)])
    o_rows = o_cur.reshape(b * g, -1, q.shape[-1])[:, :t * r]
    lse_rows = lse_cur.reshape(b * g, -1)[:, :t * r]
    plan = None
    if dm.past_tiles:
        slots = selection.select_slots(q, k, block_size=block_size, top_k=top_k)
        plan = make_plan(slots[..., 1:], g, bs, tile_rows, dm.past_tiles)

        def past(_, tile_block, pos_row):
            q_t = _gather_rows(q_rows, pos_row)
            k_t, v_t = _gather_rows(k_blk, tile_block), _gather_rows(v_blk, tile_block)
            return None, _softmax_tile(_dot("bnqd,bnkd->bnqk", q_t, k_t), v_t, scale)

        _, (o_past, lse_past) = _scan(past, dm.past_steps, None, [
            plan.tile_block_BGM, plan.pos_row_BGX.reshape(b * g, dm.past_tiles, tile_rows)])
        o_rows, lse_rows = _merge(o_rows, lse_rows, o_past, lse_past, plan, top_k - 1)
    return o_rows, lse_rows, plan


def _merge(o_rows, lse_rows, o_past, lse_past, plan, s):
    """Folds each row's past pairs into its current-block result (log-sum-exp space)."""
    bg, rows, d = o_rows.shape
    pos = plan.pair_pos_BGP.reshape(bg, rows, s)
    o_p = _gather_rows(o_past.reshape(bg, -1, d), pos)
    lse_p = jnp.where(pos >= 0, _gather_rows(lse_past.reshape(bg, -1), pos), -jnp.inf)
    lse = jnp.logaddexp(lse_rows, jax.nn.logsumexp(lse_p, axis=-1))
    w_cur = jnp.exp(lse_rows - lse)
    w_p = jnp.exp(lse_p - lse[..., None])
    o = w_cur[..., None] * o_rows + jnp.sum(w_p[..., None] * o_p, axis=2)
    return o, lse


# --- backward -----------------------------------------------------------------------

def _tile_grads(q_t, k_t, v_t, do_t, lse_t, delta_t, visible, scale):
    """FlashAttention backward of one batch of tiles: ``dq, dk, dv`` (f32)."""
    s = _dot("bnqd,bnkd->bnqk", q_t, k_t) * scale
    p = jnp.exp(s - lse_t[..., None])
    if visible is not None:
        p = jnp.where(visible, p, 0.0)
    dv = _dot("bnqk,bnqd->bnkd", p.astype(do_t.dtype), do_t)
    dp = _dot("bnqd,bnkd->bnqk", do_t, v_t)
    ds = p * (dp - delta_t[..., None]) * scale
    dq = _dot("bnqk,bnkd->bnqd", ds.astype(k_t.dtype), k_t)
    dk = _dot("bnqk,bnqd->bnkd", ds.astype(q_t.dtype), q_t)
    return dq, dk, dv


def _add_to_blocks(x_BGCKD, tile_block_BGC, n):
    """Sums tiles into their key blocks, ``[BG, n, Bs, D]``: one sorted scatter-add of
    whole ``[Bs * D]`` tiles (unused tiles, block ``n``, are dropped)."""
    bg, c, bs, d = x_BGCKD.shape
    idx = (jnp.arange(bg)[:, None] * (n + 1) + tile_block_BGC).reshape(-1)
    out = jnp.zeros((bg * (n + 1), bs * d), _F32).at[idx].add(
        x_BGCKD.reshape(bg * c, bs * d), indices_are_sorted=True)
    return out.reshape(bg, n + 1, bs, d)[:, :n]


def _backward(q, k, v, out, lse_rows, plan, dout, block_size, top_k, scale, tile_rows):
    dm = _dims(q, k, block_size, top_k, tile_rows)
    b, t, g, r, bs, n = dm.b, dm.t, dm.g, dm.r, dm.bs, dm.n
    d = q.shape[-1]
    q_rows, do_rows = _rows(q, g), _rows(dout, g)
    delta_rows = jnp.sum(do_rows.astype(_F32) * _rows(out, g).astype(_F32), axis=-1)
    k_blk, v_blk = _blocks(_rows(k, g), n, bs), _blocks(_rows(v, g), n, bs)
    causal = _causal(r, bs)
    cur_n = dm.cur_steps * -(-n // dm.cur_steps)

    def current(_, q_c, do_c, lse_c, delta_c, k_c, v_c):
        return None, _tile_grads(q_c, k_c, v_c, do_c, lse_c, delta_c, causal, scale)

    # Padded rows get lse = +inf: P = 0 there.
    _, (dq_cur, dk_blk, dv_blk) = _scan(current, dm.cur_steps, None, [
        _blocks(q_rows, cur_n, r * bs), _blocks(do_rows, cur_n, r * bs),
        _blocks(lse_rows, cur_n, r * bs, jnp.inf), _blocks(delta_rows, cur_n, r * bs),
        _pad_to(k_blk, cur_n), _pad_to(v_blk, cur_n)])
    dq_rows = dq_cur.reshape(b * g, -1, d)[:, :t * r]
    dk_blk, dv_blk = dk_blk[:, :n], dv_blk[:, :n]
    if plan is not None:
        lse_pad = jnp.concatenate([lse_rows, jnp.full((b * g, 1), jnp.inf, _F32)], axis=1)

        def past(acc, tile_block, pos_row):
            live = jnp.where(pos_row >= 0, pos_row, t * r)   # empty rows: lse = +inf
            k_t, v_t = _gather_rows(k_blk, tile_block), _gather_rows(v_blk, tile_block)
            dq_t, dk_t, dv_t = _tile_grads(
                _gather_rows(q_rows, pos_row), k_t, v_t, _gather_rows(do_rows, pos_row),
                _gather_rows(lse_pad, live), _gather_rows(delta_rows, pos_row), None, scale)
            return (acc[0] + _add_to_blocks(dk_t, tile_block, n),
                    acc[1] + _add_to_blocks(dv_t, tile_block, n)), dq_t

        (dk_blk, dv_blk), dq_past = _scan(past, dm.past_steps, (dk_blk, dv_blk), [
            plan.tile_block_BGM, plan.pos_row_BGX.reshape(b * g, dm.past_tiles, tile_rows)])
        pos = plan.pair_pos_BGP.reshape(b * g, t * r, top_k - 1)
        dq_p = _gather_rows(dq_past.reshape(b * g, -1, d), pos)
        dq_rows = dq_rows + jnp.where((pos >= 0)[..., None], dq_p, 0.0).sum(axis=2)
    dk = _heads(dk_blk.reshape(b * g, n * bs, d)[:, :t], b, t, g)
    dv = _heads(dv_blk.reshape(b * g, n * bs, d)[:, :t], b, t, g)
    return (_heads(dq_rows, b, t, g).astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype))


# --- the op -------------------------------------------------------------------------

@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _moba_blocked(q, k, v, block_size, top_k, scale, tile_rows):
    o_rows, _, _ = _forward(q, k, v, block_size, top_k, scale, tile_rows)
    return _heads(o_rows, q.shape[0], q.shape[1], k.shape[2]).astype(q.dtype)


def _moba_blocked_fwd(q, k, v, block_size, top_k, scale, tile_rows):
    o_rows, lse_rows, plan = _forward(q, k, v, block_size, top_k, scale, tile_rows)
    out = _heads(o_rows, q.shape[0], q.shape[1], k.shape[2]).astype(q.dtype)
    return out, (q, k, v, out, lse_rows, plan)


def _moba_blocked_bwd(block_size, top_k, scale, tile_rows, res, dout):
    q, k, v, out, lse_rows, plan = res
    return _backward(q, k, v, out, lse_rows, plan, dout, block_size, top_k, scale, tile_rows)


_moba_blocked.defvjp(_moba_blocked_fwd, _moba_blocked_bwd)


def moba_blocked(q, k, v, *, block_size: int, top_k: int, scale: float,
                 tile_rows: int = DEFAULT_TILE_ROWS):
    """MoBA attention (``kernels.moba`` semantics) on the tiles of the module docstring;
    arguments checked by :func:`kernels.moba.moba_attention`."""
    return _moba_blocked(q, k, v, int(block_size), int(top_k), float(scale), int(tile_rows))
