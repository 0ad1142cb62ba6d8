"""MoBA work-item kernels for TPU (Pallas Mosaic).

Grid ``(BG, W)``: one step per work item (see ``dispatch.py``).  The item tables
(tile, block, lo, hi) are scalar-prefetched into SMEM and drive the BlockSpec
index maps, so a step DMAs exactly one ``[G, D]`` tile of sorted query rows and
the one ``[Bs, D]`` key/value block that tile's rows selected; unselected blocks
are never read.  Items are block-major, so both the tile index and the block
index are non-decreasing along the grid: an output block indexed by either is
visited in one consecutive run and can accumulate in VMEM (as in megablox).

Forward: each sorted row is valid in exactly one item, which writes its
block-local ``o`` (normalised) and ``lse`` with a row select; the item is one
exact softmax over a whole MoBA block (no online rescaling is needed because
one row never meets two blocks here; the cross-block merge is done in
log-sum-exp space by ``dispatch.merge_pairs``).

Backward: one kernel; ``P = exp(S - lse)`` with the final per-row ``lse``,
``dS = P * (dP - delta)``; ``dq`` accumulates per tile, ``dk``/``dv`` per block.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.moba.dispatch import Geometry, Plan

_NT_DIMS = (((1,), (1,)), ((), ()))  # a @ b.T
_TN_DIMS = (((0,), (0,)), ((), ()))  # a.T @ b
_NN_DIMS = (((1,), (0,)), ((), ()))  # a @ b


def _dot(a, b, dims):
    """Matmul with float32 accumulation; full float32 precision for float32 inputs."""
    exact = a.dtype == jnp.float32 or b.dtype == jnp.float32
    return jax.lax.dot_general(a, b, dims, preferred_element_type=jnp.float32,
                               precision=jax.lax.Precision.HIGHEST if exact else None)


def _item(refs, bg, w, num_items):
    tile_ref, block_ref, lo_ref, hi_ref = refs
    i = bg * num_items + w
    return tile_ref[i], block_ref[i], lo_ref[i], hi_ref[i]


def _is_first(ref, bg, w, num_items):
    """True on the first step of a run with the same value of ``ref`` (tile or block)."""
    i = bg * num_items + w
    prev = ref[jnp.maximum(i - 1, 0)]
    return (w == 0) | (ref[i] != prev)


def _masked_scores(q, k, qpos_G1, block, lo, hi, block_size, scale):
    g, bs = q.shape[0], k.shape[0]
    s = _dot(q, k, _NT_DIMS) * scale
    rows = jax.lax.broadcasted_iota(jnp.int32, (g, bs), 0)
    kpos = block * block_size + jax.lax.broadcasted_iota(jnp.int32, (g, bs), 1)
    valid_G1 = ((rows >= lo) & (rows < hi))[:, :1]
    mask = (rows >= lo) & (rows < hi) & (kpos <= qpos_G1)
    return jnp.where(mask, s, -jnp.inf), mask, valid_G1


def _fwd_kernel(tile_ref, block_ref, lo_ref, hi_ref, q_ref, qpos_ref, k_ref, v_ref,
                o_ref, lse_ref, *, scale, block_size, num_items):
    bg, w = pl.program_id(0), pl.program_id(1)
    refs = (tile_ref, block_ref, lo_ref, hi_ref)
    _, block, lo, hi = _item(refs, bg, w, num_items)

    @pl.when(_is_first(tile_ref, bg, w, num_items))
    def _init():
        o_ref[...] = jnp.zeros_like(o_ref)
        lse_ref[...] = jnp.zeros_like(lse_ref)

    @pl.when(hi > lo)
    def _compute():
        s, _, valid_G1 = _masked_scores(q_ref[...], k_ref[...], qpos_ref[...], block, lo, hi,
                                        block_size, scale)
        m_G1 = jnp.max(s, axis=1, keepdims=True)
        m_G1 = jnp.where(valid_G1, m_G1, 0.0)
        p = jnp.exp(s - m_G1)
        l_G1 = jnp.sum(p, axis=1, keepdims=True)
        l_G1 = jnp.where(valid_G1, l_G1, 1.0)
        v = v_ref[...]
        o = _dot(p.astype(v.dtype), v, _NN_DIMS)
        o_ref[...] = jnp.where(valid_G1, o / l_G1, o_ref[...])
        lse_ref[...] = jnp.where(valid_G1, m_G1 + jnp.log(l_G1), lse_ref[...])


def _bwd_kernel(tile_ref, block_ref, lo_ref, hi_ref, q_ref, qpos_ref, do_ref, lse_ref,
                delta_ref, k_ref, v_ref, dq_ref, dk_ref, dv_ref, *, scale, block_size,
                num_items):
    bg, w = pl.program_id(0), pl.program_id(1)
    refs = (tile_ref, block_ref, lo_ref, hi_ref)
    _, block, lo, hi = _item(refs, bg, w, num_items)

    @pl.when(_is_first(tile_ref, bg, w, num_items))
    def _init_dq():
        dq_ref[...] = jnp.zeros_like(dq_ref)

    @pl.when(_is_first(block_ref, bg, w, num_items))
    def _init_dkv():
        dk_ref[...] = jnp.zeros_like(dk_ref)
        dv_ref[...] = jnp.zeros_like(dv_ref)

    @pl.when(hi > lo)
    def _compute():
        q, k, v, do = q_ref[...], k_ref[...], v_ref[...], do_ref[...]
        s, mask, _ = _masked_scores(q, k, qpos_ref[...], block, lo, hi, block_size, scale)
        p = jnp.where(mask, jnp.exp(s - lse_ref[...]), 0.0)
        dv_ref[...] += _dot(p.astype(do.dtype), do, _TN_DIMS)
        dp = _dot(do, v, _NT_DIMS)
        ds = p * (dp - delta_ref[...]) * scale
        dq_ref[...] += _dot(ds.astype(k.dtype), k, _NN_DIMS)
        dk_ref[...] += _dot(ds.astype(q.dtype), q, _TN_DIMS)


def _prefetch(plan: Plan):
    return (plan.item_tile_BGW.reshape(-1), plan.item_block_BGW.reshape(-1),
            plan.item_lo_BGW.reshape(-1), plan.item_hi_BGW.reshape(-1))


def _check(geo: Geometry):
    if geo.rows_per_tile % 8 or geo.block_size % 8:
        raise ValueError(f"pallas_tpu needs block_size ({geo.block_size}) and "
                         f"BlockSizes.block_rows ({geo.rows_per_tile}) to be multiples of 8 "
                         "(128 or more is fastest); use implementation='xla' otherwise.")


def _specs(geo: Geometry):
    g, bs, d = geo.rows_per_tile, geo.block_size, geo.head_dim
    tile_map = lambda bg, w, tile, block, lo, hi: (bg, tile[bg * geo.num_items + w], 0)
    block_map = lambda bg, w, tile, block, lo, hi: (bg, block[bg * geo.num_items + w], 0)
    row_spec = pl.BlockSpec((None, g, d), tile_map)
    col_spec = pl.BlockSpec((None, g, 1), tile_map)
    kv_spec = pl.BlockSpec((None, bs, d), block_map)
    return row_spec, col_spec, kv_spec


def _params():
    return pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))


def grouped_forward(q_BGPpD, k_BGTpD, v_BGTpD, plan: Plan, geo: Geometry, scale: float, *,
                    block_sizes, interpret: bool):
    _check(geo)
    bg, pp, d = q_BGPpD.shape
    row_spec, col_spec, kv_spec = _specs(geo)
    kernel = functools.partial(_fwd_kernel, scale=scale, block_size=geo.block_size,
                               num_items=geo.num_items)
    o, lse = pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((bg, pp, d), jnp.float32),
                   jax.ShapeDtypeStruct((bg, pp, 1), jnp.float32)),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=4, grid=(bg, geo.num_items),
            in_specs=[row_spec, col_spec, kv_spec, kv_spec],
            out_specs=[row_spec, col_spec]),
        compiler_params=_params(), interpret=interpret, name="moba_fwd_tpu",
    )(*_prefetch(plan), q_BGPpD, plan.qpos_BGPp[..., None], k_BGTpD, v_BGTpD)
    return o, lse[..., 0]


def grouped_backward(q_BGPpD, k_BGTpD, v_BGTpD, do_BGPpD, lse_BGPp, delta_BGPp,
                     plan: Plan, geo: Geometry, scale: float, *, block_sizes,
                     interpret: bool):
    _check(geo)
    bg, pp, d = q_BGPpD.shape
    tp = k_BGTpD.shape[1]
    row_spec, col_spec, kv_spec = _specs(geo)
    kernel = functools.partial(_bwd_kernel, scale=scale, block_size=geo.block_size,
                               num_items=geo.num_items)
    return pl.pallas_call(
        kernel,
        out_shape=(jax.ShapeDtypeStruct((bg, pp, d), jnp.float32),
                   jax.ShapeDtypeStruct((bg, tp, d), jnp.float32),
                   jax.ShapeDtypeStruct((bg, tp, d), jnp.float32)),
        grid_spec=pltpu.PrefetchScalarGridSpec(
            num_scalar_prefetch=4, grid=(bg, geo.num_items),
            in_specs=[row_spec, col_spec, row_spec, col_spec, col_spec, kv_spec, kv_spec],
            out_specs=[row_spec, kv_spec, kv_spec]),
        compiler_params=_params(), interpret=interpret, name="moba_bwd_tpu",
    )(*_prefetch(plan), q_BGPpD, plan.qpos_BGPp[..., None], do_BGPpD, lse_BGPp[..., None],
      delta_BGPp[..., None], k_BGTpD, v_BGTpD)
