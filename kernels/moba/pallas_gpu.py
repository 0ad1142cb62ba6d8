"""MoBA work-item kernels for GPU (Pallas on the Triton backend).

Triton programs run in parallel and cannot accumulate into a shared output
across grid steps, so the work items of ``dispatch.py`` are walked *inside* the
programs instead of along the grid:

* forward and ``dq``: one program per (kv head, tile of ``G`` sorted rows).  It
  loops over the tile's items (``tile_item_start/end``); each item names one
  selected key block, read from HBM in chunks of ``block_k`` keys by a dynamic
  slice at ``block * Bs`` (the index arrays are loaded from refs).  A float32
  online softmax runs over all chunks; rows that do not belong to an item (or
  keys after the row's token, in its current block) are masked with ``-inf``.
* ``dk``/``dv``: one program per (kv head, key block, chunk of ``block_k`` keys).
  It loops over the tiles that hold the block's sorted run
  ``[block_start, block_end)`` and accumulates ``P^T dO`` and ``dS^T Q``.

Backward uses the final per-row ``lse`` and ``delta = rowsum(dO * O)``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from kernels.moba.dispatch import Geometry, Plan


def _compiler_params(block_sizes):
    try:  # jax >= 0.6: backend-specific params live in pallas.triton
        from jax.experimental.pallas import triton as pltriton
        return pltriton.CompilerParams(num_warps=block_sizes.num_warps,
                                       num_stages=block_sizes.num_stages)
    except (ImportError, AttributeError):  # pragma: no cover - very old / renamed API
        return None


def _dot(a, b, trans_a=False, trans_b=False):
    """2-D matmul with float32 accumulation (no TF32 for float32 inputs)."""
    dims = (((0 if trans_a else 1,), (1 if trans_b else 0,)), ((), ()))
    exact = a.dtype == jnp.float32 or b.dtype == jnp.float32
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32,
                               precision=jax.lax.Precision.HIGHEST if exact else None)


def _block_k(geo: Geometry, block_sizes) -> int:
    return min(block_sizes.block_k, geo.block_size)


def _is_pow2(x: int) -> bool:
    return x >= 16 and (x & (x - 1)) == 0


def _check(geo: Geometry, block_sizes):
    bk = _block_k(geo, block_sizes)
    problems = []
    if not _is_pow2(geo.rows_per_tile):
        problems.append(f"BlockSizes.block_rows={geo.rows_per_tile} must be a power of two >= 16")
    if not _is_pow2(bk) or geo.block_size % bk:
        problems.append(f"block_k={bk} must be a power of two >= 16 dividing "
                        f"block_size={geo.block_size}")
    if not _is_pow2(geo.head_dim):
        problems.append(f"head_dim={geo.head_dim} must be a power of two >= 16")
    if problems:
        raise ValueError("pallas_gpu: " + "; ".join(problems) +
                         ". Adjust BlockSizes or use implementation='xla'.")


def _masked_scores(q, k, qpos_G, rows_G, lo, hi, kpos0, scale):
    bk = k.shape[0]
    s = _dot(q, k, trans_b=True) * scale
    valid_G = (rows_G >= lo) & (rows_G < hi)
    kpos = kpos0 + jnp.arange(bk)
    mask = valid_G[:, None] & (kpos[None, :] <= qpos_G[:, None])
    return jnp.where(mask, s, -jnp.inf), mask


def _num_chunks(qpos, rows_G, lo, hi, block, block_size, block_k):
    """Key chunks of ``block`` that any of the item's rows ``[lo, hi)`` can see: all of
    them for a past block, up to the last row's token for its current block (the chunks
    after it are entirely in the future of every row, so skipping them changes nothing)."""
    last = jnp.max(jnp.where((rows_G >= lo) & (rows_G < hi), qpos, -1))
    seen = (last - block * block_size) // block_k + 1
    return jnp.clip(seen, 0, block_size // block_k)


def _fwd_kernel(item_start_ref, item_end_ref, block_ref, lo_ref, hi_ref, q_ref, qpos_ref,
                k_ref, v_ref, o_ref, lse_ref, *, scale, block_size, block_k, tile):
    bg, t = pl.program_id(0), pl.program_id(1)
    rows = pl.ds(t * tile, tile)
    q = q_ref[bg, rows, :]
    qpos = qpos_ref[bg, rows]
    rows_G = jnp.arange(tile)
    d = q.shape[-1]

    def item_body(j, carry):
        block, lo, hi = block_ref[bg, j], lo_ref[bg, j], hi_ref[bg, j]

        def chunk_body(c, carry):
            m, l, acc = carry
            start = block * block_size + c * block_k
            k = k_ref[bg, pl.ds(start, block_k), :]
            v = v_ref[bg, pl.ds(start, block_k), :]
            s, _ = _masked_scores(q, k, qpos, rows_G, lo, hi, start, scale)
            m_new = jnp.maximum(m, jnp.max(s, axis=1))
            m_safe = jnp.where(m_new == -jnp.inf, 0.0, m_new)
            alpha = jnp.exp(m - m_safe)
            p = jnp.exp(s - m_safe[:, None])
            l = l * alpha + jnp.sum(p, axis=1)
            acc = acc * alpha[:, None] + _dot(p.astype(v.dtype), v)
            return m_new, l, acc

        n_chunks = _num_chunks(qpos, rows_G, lo, hi, block, block_size, block_k)
        return jax.lax.fori_loop(0, n_chunks, chunk_body, carry)

    init = (jnp.full((tile,), -jnp.inf, jnp.float32), jnp.zeros((tile,), jnp.float32),
            jnp.zeros((tile, d), jnp.float32))
    m, l, acc = jax.lax.fori_loop(item_start_ref[bg, t], item_end_ref[bg, t], item_body, init)
    has = l > 0.0
    l_safe = jnp.where(has, l, 1.0)
    o_ref[bg, rows, :] = acc / l_safe[:, None]
    lse_ref[bg, rows] = jnp.where(has, m + jnp.log(l_safe), 0.0)


def _dq_kernel(item_start_ref, item_end_ref, block_ref, lo_ref, hi_ref, q_ref, qpos_ref,
               do_ref, lse_ref, delta_ref, k_ref, v_ref, dq_ref, *, scale, block_size,
               block_k, tile):
    bg, t = pl.program_id(0), pl.program_id(1)
    rows = pl.ds(t * tile, tile)
    q, do = q_ref[bg, rows, :], do_ref[bg, rows, :]
    qpos, lse, delta = qpos_ref[bg, rows], lse_ref[bg, rows], delta_ref[bg, rows]
    rows_G = jnp.arange(tile)

    def item_body(j, dq):
        block, lo, hi = block_ref[bg, j], lo_ref[bg, j], hi_ref[bg, j]

        def chunk_body(c, dq):
            start = block * block_size + c * block_k
            k = k_ref[bg, pl.ds(start, block_k), :]
            v = v_ref[bg, pl.ds(start, block_k), :]
            s, mask = _masked_scores(q, k, qpos, rows_G, lo, hi, start, scale)
            p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
            dp = _dot(do, v, trans_b=True)
            ds = p * (dp - delta[:, None]) * scale
            return dq + _dot(ds.astype(k.dtype), k)

        n_chunks = _num_chunks(qpos, rows_G, lo, hi, block, block_size, block_k)
        return jax.lax.fori_loop(0, n_chunks, chunk_body, dq)

    dq = jax.lax.fori_loop(item_start_ref[bg, t], item_end_ref[bg, t], item_body,
                           jnp.zeros(q.shape, jnp.float32))
    dq_ref[bg, rows, :] = dq


def _dkv_kernel(block_start_ref, block_end_ref, q_ref, qpos_ref, do_ref, lse_ref, delta_ref,
                k_ref, v_ref, dk_ref, dv_ref, *, scale, block_size, block_k, tile, group):
    bg, n, c = pl.program_id(0), pl.program_id(1), pl.program_id(2)
    start = n * block_size + c * block_k
    keys = pl.ds(start, block_k)
    k, v = k_ref[bg, keys, :], v_ref[bg, keys, :]
    run_start, run_end = block_start_ref[bg, n], block_end_ref[bg, n]
    rows_G = jnp.arange(tile)

    def tile_body(t, carry):
        dk, dv = carry
        rows = pl.ds(t * tile, tile)
        q, do = q_ref[bg, rows, :], do_ref[bg, rows, :]
        qpos, lse, delta = qpos_ref[bg, rows], lse_ref[bg, rows], delta_ref[bg, rows]
        lo, hi = run_start - t * tile, run_end - t * tile
        s, mask = _masked_scores(q, k, qpos, rows_G, lo, hi, start, scale)
        p = jnp.where(mask, jnp.exp(s - lse[:, None]), 0.0)
        dv = dv + _dot(p.astype(do.dtype), do, trans_a=True)
        dp = _dot(do, v, trans_b=True)
        ds = p * (dp - delta[:, None]) * scale
        dk = dk + _dot(ds.astype(q.dtype), q, trans_a=True)
        return dk, dv

    # The block's sorted run lists its own tokens first (slot 0, ascending positions:
    # the sort is stable and pairs are numbered by token), then the later tokens that
    # chose it. Rows whose token precedes this key chunk (the first `start - n *
    # block_size` tokens, R rows each) see none of its keys: start after them.
    first_tile = (run_start + (start - n * block_size) * group) // tile
    last_tile = jnp.where(run_end > run_start, (run_end - 1) // tile + 1, first_tile)
    zeros = jnp.zeros(k.shape, jnp.float32)
    dk, dv = jax.lax.fori_loop(first_tile, last_tile, tile_body, (zeros, zeros))
    dk_ref[bg, keys, :] = dk
    dv_ref[bg, keys, :] = dv


def _item_tables(plan: Plan):
    return (plan.tile_item_start_BGNT, plan.tile_item_end_BGNT, plan.item_block_BGW,
            plan.item_lo_BGW, plan.item_hi_BGW)


def grouped_forward(q_BGPpD, k_BGTpD, v_BGTpD, plan: Plan, geo: Geometry, scale: float, *,
                    block_sizes, interpret: bool):
    _check(geo, block_sizes)
    bg, pp, d = q_BGPpD.shape
    kernel = functools.partial(_fwd_kernel, scale=scale, block_size=geo.block_size,
                               block_k=_block_k(geo, block_sizes), tile=geo.rows_per_tile)
    return pl.pallas_call(
        kernel, grid=(bg, geo.num_tiles),
        out_shape=(jax.ShapeDtypeStruct((bg, pp, d), jnp.float32),
                   jax.ShapeDtypeStruct((bg, pp), jnp.float32)),
        compiler_params=_compiler_params(block_sizes), interpret=interpret,
        name="moba_fwd_gpu",
    )(*_item_tables(plan), q_BGPpD, plan.qpos_BGPp, k_BGTpD, v_BGTpD)


def grouped_backward(q_BGPpD, k_BGTpD, v_BGTpD, do_BGPpD, lse_BGPp, delta_BGPp,
                     plan: Plan, geo: Geometry, scale: float, *, block_sizes,
                     interpret: bool):
    _check(geo, block_sizes)
    bg, pp, d = q_BGPpD.shape
    tp = k_BGTpD.shape[1]
    bk = _block_k(geo, block_sizes)
    static = dict(scale=scale, block_size=geo.block_size, block_k=bk, tile=geo.rows_per_tile)
    params = _compiler_params(block_sizes)
    dq = pl.pallas_call(
        functools.partial(_dq_kernel, **static), grid=(bg, geo.num_tiles),
        out_shape=jax.ShapeDtypeStruct((bg, pp, d), jnp.float32),
        compiler_params=params, interpret=interpret, name="moba_bwd_dq_gpu",
    )(*_item_tables(plan), q_BGPpD, plan.qpos_BGPp, do_BGPpD, lse_BGPp, delta_BGPp,
      k_BGTpD, v_BGTpD)
    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, group=geo.group, **static),
        grid=(bg, geo.num_blocks, geo.block_size // bk),
        out_shape=(jax.ShapeDtypeStruct((bg, tp, d), jnp.float32),
                   jax.ShapeDtypeStruct((bg, tp, d), jnp.float32)),
        compiler_params=params, interpret=interpret, name="moba_bwd_dkv_gpu",
    )(plan.block_start_BGN, plan.block_end_BGN, q_BGPpD, plan.qpos_BGPp, do_BGPpD,
      lse_BGPp, delta_BGPp, k_BGTpD, v_BGTpD)
    return dq, dk, dv
