"""MoBA work items in plain ``jnp`` (the ``implementation="xla"`` path).

Runs on any backend.  Each work item (see ``dispatch.py``) is a dense
``[G, D] x [D, Bs]`` matmul of one tile of sorted rows against one key block,
so the total cost is ``(T * R * top_k + N * G) * Bs * D``: linear in ``T``.
Items are processed in chunks under ``lax.scan``, so the ``[G, Bs]`` score tiles
of only one chunk exist at a time; per-item results (linear in ``T``) are then
scatter-added, in one sorted scatter, into the sorted-row outputs (each sorted
row is valid in exactly one item, so adding masked values is an exact select)
and, for ``dk``/``dv``, into the key blocks.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.moba.dispatch import Geometry, Plan

# Upper bound on the elements of one chunk's [BG, C, G, Bs] score tensor.
_CHUNK_SCORE_ELEMENTS = 1 << 20


def items_per_step(geo: Geometry, bg: int) -> int:
    """Work items per ``lax.scan`` step (each step's score tiles hold about 2^20 elements)."""
    per_item = bg * geo.rows_per_tile * geo.block_size
    return max(1, min(geo.num_items, _CHUNK_SCORE_ELEMENTS // per_item))


def _chunked_items(plan: Plan, geo: Geometry, bg: int):
    """Item arrays reshaped to ``[steps, BG, C]`` (padded with skipped items)."""
    c = items_per_step(geo, bg)
    steps = -(-geo.num_items // c)
    pad = steps * c - geo.num_items

    def prep(x, fill_last):
        if pad:
            tail = x[:, -1:] if fill_last else jnp.zeros_like(x[:, :1])
            x = jnp.concatenate([x, jnp.repeat(tail, pad, axis=1)], axis=1)
        return x.reshape(bg, steps, c).transpose(1, 0, 2)

    return (prep(plan.item_tile_BGW, True), prep(plan.item_block_BGW, True),
            prep(plan.item_lo_BGW, False), prep(plan.item_hi_BGW, False))


def _unchunk(x):
    """``[steps, BG, C, ...] -> [BG, steps * C, ...]`` (item order restored)."""
    x = jnp.moveaxis(x, 1, 0)
    return x.reshape(x.shape[0], -1, *x.shape[3:])


def _add_rows(acc_BGPpX, tiles_BGW, x_BGWGX, rows_per_tile: int):
    """Scatter-adds per-item row results into sorted-row order (tiles are non-decreasing)."""
    def one(acc, tiles, x):
        idx = (tiles[:, None] * rows_per_tile + jnp.arange(rows_per_tile)[None, :]).reshape(-1)
        return acc.at[idx].add(x.reshape(-1, *x.shape[2:]), indices_are_sorted=True)
    return jax.vmap(one)(acc_BGPpX, tiles_BGW, x_BGWGX)


def _scores(q_CGD, k_CBD, qpos_CG, block_C, lo_C, hi_C, geo: Geometry, scale: float):
    """Masked scaled scores ``[C, G, Bs]`` (f32) and their mask."""
    g, bs = geo.rows_per_tile, geo.block_size
    s = jnp.einsum("cgd,cbd->cgb", q_CGD, k_CBD, preferred_element_type=jnp.float32,
                   precision=jax.lax.Precision.HIGHEST) * scale
    rows_G = jnp.arange(g)
    valid_CG = (rows_G[None, :] >= lo_C[:, None]) & (rows_G[None, :] < hi_C[:, None])
    kpos_CB = block_C[:, None] * bs + jnp.arange(bs)[None, :]
    mask = valid_CG[:, :, None] & (kpos_CB[:, None, :] <= qpos_CG[:, :, None])
    return jnp.where(mask, s, -jnp.inf), mask, valid_CG


def grouped_forward(q_BGPpD, k_BGTpD, v_BGTpD, plan: Plan, geo: Geometry, scale: float):
    """Per sorted pair: ``o`` (f32, normalised over the pair's block) and ``lse``."""
    bg, _, d = q_BGPpD.shape
    nt, g, n, bs = geo.num_tiles, geo.rows_per_tile, geo.num_blocks, geo.block_size
    q_tiles = q_BGPpD.reshape(bg, nt, g, d)
    qpos_tiles = plan.qpos_BGPp.reshape(bg, nt, g)
    k_blocks = k_BGTpD.reshape(bg, n, bs, d)
    v_blocks = v_BGTpD.reshape(bg, n, bs, d)

    def one(q_t, qpos_t, k_b, v_b, tile_C, block_C, lo_C, hi_C):
        s, _, valid_CG = _scores(q_t[tile_C], k_b[block_C], qpos_t[tile_C], block_C, lo_C,
                                 hi_C, geo, scale)
        m_CG = s.max(axis=-1)
        m_CG = jnp.where(jnp.isfinite(m_CG), m_CG, 0.0)
        p = jnp.exp(s - m_CG[..., None])
        l_CG = jnp.where(valid_CG, p.sum(axis=-1), 1.0)
        v_C = v_b[block_C]
        o = jnp.einsum("cgb,cbd->cgd", p.astype(v_C.dtype), v_C,
                       preferred_element_type=jnp.float32, precision=jax.lax.Precision.HIGHEST)
        o = jnp.where(valid_CG[..., None], o / l_CG[..., None], 0.0)
        lse = jnp.where(valid_CG, m_CG + jnp.log(l_CG), 0.0)
        return o, lse

    def step(_, items):
        return None, jax.vmap(one)(q_tiles, qpos_tiles, k_blocks, v_blocks, *items)

    items = _chunked_items(plan, geo, bg)
    _, (o, lse) = jax.lax.scan(step, None, items)
    tiles = _unchunk(items[0])
    return (_add_rows(jnp.zeros((bg, nt * g, d), jnp.float32), tiles, _unchunk(o), g),
            _add_rows(jnp.zeros((bg, nt * g), jnp.float32), tiles, _unchunk(lse), g))


def grouped_backward(q_BGPpD, k_BGTpD, v_BGTpD, do_BGPpD, lse_BGPp, delta_BGPp,
                     plan: Plan, geo: Geometry, scale: float):
    """Flash-attention backward per work item: ``dq`` per sorted pair, ``dk``/``dv``.

    ``lse`` and ``delta = rowsum(dO * O)`` are the *final* per-row values gathered
    into sorted order, so ``P = exp(S - lse)`` are the true attention weights.
    """
    bg, _, d = q_BGPpD.shape
    nt, g, n, bs = geo.num_tiles, geo.rows_per_tile, geo.num_blocks, geo.block_size
    q_tiles = q_BGPpD.reshape(bg, nt, g, d)
    do_tiles = do_BGPpD.reshape(bg, nt, g, d)
    lse_tiles = lse_BGPp.reshape(bg, nt, g)
    delta_tiles = delta_BGPp.reshape(bg, nt, g)
    qpos_tiles = plan.qpos_BGPp.reshape(bg, nt, g)
    k_blocks = k_BGTpD.reshape(bg, n, bs, d)
    v_blocks = v_BGTpD.reshape(bg, n, bs, d)
    hi = jax.lax.Precision.HIGHEST
    f32 = jnp.float32

    def one(q_t, do_t, lse_t, delta_t, qpos_t, k_b, v_b, tile_C, block_C, lo_C, hi_C):
        q_C, do_C, k_C, v_C = q_t[tile_C], do_t[tile_C], k_b[block_C], v_b[block_C]
        s, mask, _ = _scores(q_C, k_C, qpos_t[tile_C], block_C, lo_C, hi_C, geo, scale)
        p = jnp.where(mask, jnp.exp(s - lse_t[tile_C][..., None]), 0.0)
        dv = jnp.einsum("cgb,cgd->cbd", p.astype(do_C.dtype), do_C, preferred_element_type=f32,
                        precision=hi)
        dp = jnp.einsum("cgd,cbd->cgb", do_C, v_C, preferred_element_type=f32, precision=hi)
        ds = p * (dp - delta_t[tile_C][..., None]) * scale
        dq = jnp.einsum("cgb,cbd->cgd", ds.astype(k_C.dtype), k_C, preferred_element_type=f32,
                        precision=hi)
        dk = jnp.einsum("cgb,cgd->cbd", ds.astype(q_C.dtype), q_C, preferred_element_type=f32,
                        precision=hi)
        return dq, dk, dv

    def step(_, items):
        return None, jax.vmap(one)(q_tiles, do_tiles, lse_tiles, delta_tiles, qpos_tiles,
                                   k_blocks, v_blocks, *items)

    items = _chunked_items(plan, geo, bg)
    _, (dq, dk, dv) = jax.lax.scan(step, None, items)
    tiles, blocks = _unchunk(items[0]), _unchunk(items[1])
    dq = _add_rows(jnp.zeros((bg, nt * g, d), f32), tiles, _unchunk(dq), g)
    add_blocks = jax.vmap(lambda acc, b, x: acc.at[b].add(x, indices_are_sorted=True))
    dk = add_blocks(jnp.zeros((bg, n, bs, d), f32), blocks, _unchunk(dk))
    dv = add_blocks(jnp.zeros((bg, n, bs, d), f32), blocks, _unchunk(dv))
    return dq, dk.reshape(bg, n * bs, d), dv.reshape(bg, n * bs, d)
