"""KDA Pallas kernels for GPU (Triton), head dims K, V powers of two in [16, 256].

Tiles come from ``pallas.BlockSizes`` (defaults ``block_k = block_v = 16``); ``bk`` and
``bv`` below are those clamped to K and V.

* Intra-chunk kernels: the shared ones of ``pallas_common.py``, grid ``(B, H, N)``
  (one chunk per program), ``BlockSizes.num_warps`` warps. Inside, the ``[C, C]``
  matrices (``Akk, Aqk, Tinv``, and in the backward ``dTinv, dA``) are accumulated over
  column tiles of ``bk`` key / ``bv`` value channels, and the per-channel outputs
  (``W, U``; ``dq, dk, dG, dv``) are written one column tile at a time, so no ``[C, K]``
  or ``[16, 16, K]`` value is ever live.
* State pass: grid ``(B, H, V / bv)``. Columns of the state are independent
  (``o[:, vt] = e^G q S[:, vt] + Aqk (U[:, vt] - W S[:, vt])``,
  ``S[:, vt] <- decay S[:, vt] + Kg^T (U - W S)[:, vt]``), so each program holds a
  ``[K, bv]`` float32 state and loops over the chunks with ``lax.fori_loop`` (state in
  registers as the loop carry, ``BlockSizes.state_num_warps`` warps; per-chunk math
  ``pallas_state.step_fwd`` / ``step_bwd``). In the backward ``dS`` and ``dU`` are per V
  tile; ``dW, dAqk, dq1, dk1, dG1, dGs, ddecay`` are sums over V, written as per-tile
  partials ``[V / bv, B, H, ...]`` and summed in XLA.

Shared memory (estimates at K = V = 128, C = 64, float32 or bfloat16 inputs: every
kernel computes in float32, so the input dtype hardly matters). One measurement on an
H200 (232448 bytes per block, as an H100) anchors them: ``block_v=128`` (whole V: a
``[128, 128]`` state per state-pass program) asked for 294912 bytes, the number the old
untiled kernels hit at 128 (the error names no kernel; from a passing run only
``block_v`` changed, so it is the state pass: 2.25 x its 64 KiB state), while
``block_v=64`` compiled and ran. Scaling that ratio:

* state pass fwd/bwd: about ``2.25 * 4 * K * bv`` bytes (state, ``dS`` and the
  ``[C, K] x [K, bv]`` dot operands): 37 KiB at the default ``bv = 16``, 74 KiB at 32,
  147 KiB at 64.
* intra-chunk fwd/bwd: ``[16, 16, bk]`` float32 pairwise diagonal terms (16 KiB at
  ``bk = 16``, two live), dot operands ``[C, bk]`` / ``[C, C]`` float32 (4 + 16 KiB),
  the ``[C, C]`` accumulators (16 KiB each, registers): under about 80 KiB; ``bk = 64``
  (about twice that) also compiled at K = 128.

Measured on that H200 (jax 0.11.2, fwd+bwd, 16 heads, bfloat16, T = 4096; the xla path
7.6 ms at 128 and 6.2 ms at 64): K = V = 128 with ``block_k=16`` and ``block_v`` 16 / 32
took 49.6 / 72.9 ms (``block_k=32`` the same, ``state_num_warps=2`` 134 ms); K = V = 64
took 34.1 ms at ``block_v=32`` and 89.5 ms at ``block_k = block_v = 64`` (the old
kernels' tiling). The state pass's sequential chunk loop dominates: more V tiles, more
programs. The kernels match the xla path (max relative error below 1e-6 in float32)
but are still about 6x slower than it. These timings predate the exact decay exponents
(``pallas_common.py``: per 16-row block and key tile one more ``[C, C] x [C, bk]``
product, and a 15-step loop over the ``[16, 16, bk]`` pair exponents, whose accumulator
is one more such array live; the backward shares them between its two score-matrix
cotangents); not re-measured since.

Every function takes ``[B, H, Tp, D]`` arrays (``Tp`` a multiple of the chunk ``C``) and
the same keywords as its twin in ``pallas_tpu.py``; ``pallas.py`` picks the module.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels.kda import pallas_common
from kernels.kda.pallas_state import bwd_out_shapes, fwd_out_shapes, step_bwd, step_fwd

_F32 = jnp.float32


def _triton_params(num_warps, num_stages):
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


# ----------------------------------------------------------------------------- intra-chunk
def intra_fwd(q, k, v, g, beta, *, scale, C, block_sizes, interpret):
    """``W, U, Aqk`` per chunk (``pallas_common.intra_fwd``, column tiles of
    ``block_sizes.block_k`` / ``block_v``)."""
    params = _triton_params(block_sizes.num_warps, block_sizes.num_stages)
    return pallas_common.intra_fwd(q, k, v, g, beta, scale=scale, C=C, compiler_params=params,
                                   interpret=interpret, block_k=block_sizes.block_k,
                                   block_v=block_sizes.block_v)


def intra_bwd(q, k, v, g, beta, dW, dU, dAqk, dq1, dk1, dG1, *, scale, C, block_sizes,
              interpret):
    """``dq, dk, dv, dG, dbeta`` through the intra-chunk matrices."""
    params = _triton_params(block_sizes.num_warps, block_sizes.num_stages)
    return pallas_common.intra_bwd(q, k, v, g, beta, dW, dU, dAqk, dq1, dk1, dG1, scale=scale,
                                   C=C, compiler_params=params, interpret=interpret,
                                   block_k=block_sizes.block_k, block_v=block_sizes.block_v)


# ----------------------------------------------------------------------------- state pass
def _rows(ref, n, size):
    return ref[pl.ds(pl.multiple_of(n * size, size), size), :]


def _state_fwd_kernel(q_ref, k_ref, g_ref, gs_ref, w_ref, u_ref, a_ref, d_ref, s0_ref,
                      o_ref, sT_ref, *rest, scale, C, K, N, with_states):
    h_ref = rest[0] if with_states else None

    def body(n, S):
        if with_states:
            h_ref[pl.ds(pl.multiple_of(n * K, K), K), :] = S
        o, S_next = step_fwd(_rows(q_ref, n, C), _rows(k_ref, n, C), _rows(g_ref, n, C),
                             _rows(gs_ref, n, C),
                             _rows(w_ref, n, C), _rows(u_ref, n, C), _rows(a_ref, n, C),
                             _rows(d_ref, n, K), S, scale)
        o_ref[pl.ds(pl.multiple_of(n * C, C), C), :] = o.astype(o_ref.dtype)
        return S_next

    sT_ref[...] = lax.fori_loop(0, N, body, s0_ref[...])


def _state_bwd_kernel(q_ref, k_ref, g_ref, gs_ref, w_ref, u_ref, a_ref, d_ref, h_ref, do_ref,
                      dsT_ref, dw_ref, du_ref, daqk_ref, dq1_ref, dk1_ref, dg1_ref, dgs_ref,
                      ddec_ref, ds0_ref, *, scale, C, K, N):
    def body(i, dS):
        n = N - 1 - i
        grads, dS_prev = step_bwd(_rows(q_ref, n, C), _rows(k_ref, n, C), _rows(g_ref, n, C),
                                  _rows(gs_ref, n, C),
                                  _rows(w_ref, n, C), _rows(u_ref, n, C), _rows(a_ref, n, C),
                                  _rows(d_ref, n, K), _rows(h_ref, n, K), _rows(do_ref, n, C),
                                  dS, scale)
        for ref, name in ((dw_ref, "dW"), (du_ref, "dU"), (daqk_ref, "dAqk"), (dq1_ref, "dq1"),
                          (dk1_ref, "dk1"), (dg1_ref, "dG1"), (dgs_ref, "dGs")):
            ref[pl.ds(pl.multiple_of(n * C, C), C), :] = grads[name]
        ddec_ref[pl.ds(pl.multiple_of(n * K, K), K), :] = grads["ddecay"]
        return dS_prev

    ds0_ref[...] = lax.fori_loop(0, N, body, dsT_ref[...])


def _full(shape):
    """Whole ``[rows, D]`` block of one (batch, head), the same for every V tile."""
    return pl.BlockSpec((None, None) + shape, lambda b, h, j: (b, h, 0, 0))


def _v_tile(rows, bv):
    """``[rows, bv]`` block: V tile ``j`` of one (batch, head)."""
    return pl.BlockSpec((None, None, rows, bv), lambda b, h, j: (b, h, 0, j))


def _partial(shape):
    """V tile ``j``'s partial sum of a ``[NV, B, H, rows, D]`` output (summed in XLA)."""
    return pl.BlockSpec((None, None, None) + shape, lambda b, h, j: (j, b, h, 0, 0))


def _v_block(V, block_sizes):
    bv = min(block_sizes.block_v, V)
    return bv, V // bv


def state_fwd(q, k, G, Gs, W, U, Aqk, decay, s0, *, scale, C, out_dtype, with_states,
              block_sizes, interpret):
    """Forward state pass: ``o``, the final state and (``with_states``) the per-chunk
    start states ``h``. ``G`` / ``Gs``: in-chunk prefix / suffix sums of the log-decays
    (``pallas.chunk_sums``). Grid ``(B, H, V / block_v)``: state columns are independent."""
    B, H, Tp, K = q.shape
    V = U.shape[-1]
    N = Tp // C
    bv, nv = _v_block(V, block_sizes)
    out_specs = ([_v_tile(Tp, bv), _v_tile(K, bv)]
                 + ([_v_tile(N * K, bv)] if with_states else []))
    out_shape = fwd_out_shapes(B, H, Tp, K, V, N, out_dtype, with_states)
    return pl.pallas_call(
        functools.partial(_state_fwd_kernel, scale=scale, C=C, K=K, N=N, with_states=with_states),
        grid=(B, H, nv),
        in_specs=[_full((Tp, K)), _full((Tp, K)), _full((Tp, K)), _full((Tp, K)),
                  _full((Tp, K)), _v_tile(Tp, bv), _full((Tp, C)), _full((N * K, 1)),
                  _v_tile(K, bv)],
        out_specs=out_specs, out_shape=out_shape,
        compiler_params=_triton_params(block_sizes.state_num_warps, block_sizes.num_stages),
        interpret=interpret, name="kda_state_fwd_gpu",
    )(q, k, G, Gs, W, U, Aqk, decay, s0)


def state_bwd(q, k, G, Gs, W, U, Aqk, decay, h, dO, dsT, *, scale, C, block_sizes,
              interpret):
    """Backward state pass, an in-kernel loop over the chunks in reverse, grid
    ``(B, H, V / block_v)``. ``dU`` and ``dS`` are per V tile; ``dW, dAqk, dq1, dk1, dG1,
    dGs, ddecay`` sum over V, so each tile writes its partial (leading ``NV`` axis) and XLA
    adds them up (no extra memory when ``V <= block_v``)."""
    B, H, Tp, K = q.shape
    V = U.shape[-1]
    N = Tp // C
    bv, nv = _v_block(V, block_sizes)
    shapes = bwd_out_shapes(B, H, Tp, K, V, C, N)
    summed = (0, 2, 3, 4, 5, 6, 7)  # dW, dAqk, dq1, dk1, dG1, dGs, ddecay
    out_shape = [jax.ShapeDtypeStruct((nv,) + s.shape, s.dtype) if i in summed else s
                 for i, s in enumerate(shapes)]
    outs = pl.pallas_call(
        functools.partial(_state_bwd_kernel, scale=scale, C=C, K=K, N=N),
        grid=(B, H, nv),
        in_specs=[_full((Tp, K)), _full((Tp, K)), _full((Tp, K)), _full((Tp, K)),
                  _full((Tp, K)), _v_tile(Tp, bv), _full((Tp, C)), _full((N * K, 1)),
                  _v_tile(N * K, bv), _v_tile(Tp, bv), _v_tile(K, bv)],
        out_specs=[_partial((Tp, K)), _v_tile(Tp, bv), _partial((Tp, C)), _partial((Tp, K)),
                   _partial((Tp, K)), _partial((Tp, K)), _partial((Tp, K)),
                   _partial((N * K, 1)), _v_tile(K, bv)],
        out_shape=out_shape,
        compiler_params=_triton_params(block_sizes.state_num_warps, block_sizes.num_stages),
        interpret=interpret, name="kda_state_bwd_gpu",
    )(q, k, G, Gs, W, U, Aqk, decay, h, dO, dsT)
    return [(x[0] if nv == 1 else jnp.sum(x, axis=0)) if i in summed else x
            for i, x in enumerate(outs)]
