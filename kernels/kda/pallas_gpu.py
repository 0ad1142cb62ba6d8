"""KDA Pallas kernels for GPU (Triton).

* Intra-chunk kernels: the shared ones of ``pallas_common.py``, launched with
  ``BlockSizes.num_warps`` warps.
* State pass: grid ``(B, H)``; each program holds full-sequence blocks and loops over
  chunks with ``lax.fori_loop``, keeping the state in registers as the loop carry
  (``BlockSizes.state_num_warps`` warps). Per-chunk math: ``pallas_common.step_fwd`` /
  ``step_bwd``.

Head dims are limited to 64 (``pallas.MAX_HEAD_DIM``): with 128 the intra-chunk kernels
asked for 294912 bytes of shared memory on an H100, which has 232448.

Every function takes ``[B, H, Tp, D]`` arrays (``Tp`` a multiple of the chunk ``C``) and
the same keywords as its twin in ``pallas_tpu.py``; ``pallas.py`` picks the module.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels.kda import pallas_common
from kernels.kda.pallas_common import bwd_out_shapes, fwd_out_shapes, step_bwd, step_fwd

_F32 = jnp.float32


def _triton_params(num_warps, num_stages):
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


# ----------------------------------------------------------------------------- intra-chunk
def intra_fwd(q, k, v, G, beta, *, scale, C, block_sizes, interpret):
    """``W, U, Aqk`` per chunk (``pallas_common.intra_fwd``)."""
    params = _triton_params(block_sizes.num_warps, block_sizes.num_stages)
    return pallas_common.intra_fwd(q, k, v, G, beta, scale=scale, C=C, compiler_params=params,
                                   interpret=interpret)


def intra_bwd(q, k, v, G, beta, dW, dU, dAqk, dq1, dk1, dG1, *, scale, C, block_sizes,
              interpret):
    """``dq, dk, dv, dG, dbeta`` through the intra-chunk matrices."""
    params = _triton_params(block_sizes.num_warps, block_sizes.num_stages)
    return pallas_common.intra_bwd(q, k, v, G, beta, dW, dU, dAqk, dq1, dk1, dG1, scale=scale,
                                   C=C, compiler_params=params, interpret=interpret)


# ----------------------------------------------------------------------------- state pass
def _rows(ref, n, size):
    return ref[pl.ds(pl.multiple_of(n * size, size), size), :]


def _state_fwd_kernel(q_ref, k_ref, g_ref, w_ref, u_ref, a_ref, d_ref, s0_ref,
                      o_ref, sT_ref, *rest, scale, C, K, N, with_states):
    h_ref = rest[0] if with_states else None

    def body(n, S):
        if with_states:
            h_ref[pl.ds(pl.multiple_of(n * K, K), K), :] = S
        G = _rows(g_ref, n, C)
        G_last = g_ref[pl.ds(n * C + C - 1, 1), :]
        o, S_next = step_fwd(_rows(q_ref, n, C), _rows(k_ref, n, C), G, G_last,
                             _rows(w_ref, n, C), _rows(u_ref, n, C), _rows(a_ref, n, C),
                             _rows(d_ref, n, K), S, scale)
        o_ref[pl.ds(pl.multiple_of(n * C, C), C), :] = o.astype(o_ref.dtype)
        return S_next

    sT_ref[...] = lax.fori_loop(0, N, body, s0_ref[...])


def _state_bwd_kernel(q_ref, k_ref, g_ref, w_ref, u_ref, a_ref, d_ref, h_ref, do_ref,
                      dsT_ref, dw_ref, du_ref, daqk_ref, dq1_ref, dk1_ref, dg1_ref, ddec_ref,
                      ds0_ref, *, scale, C, K, N):
    def body(i, dS):
        n = N - 1 - i
        G = _rows(g_ref, n, C)
        G_last = g_ref[pl.ds(n * C + C - 1, 1), :]
        grads, dS_prev = step_bwd(_rows(q_ref, n, C), _rows(k_ref, n, C), G, G_last,
                                  _rows(w_ref, n, C), _rows(u_ref, n, C), _rows(a_ref, n, C),
                                  _rows(d_ref, n, K), _rows(h_ref, n, K), _rows(do_ref, n, C),
                                  dS, scale)
        for ref, name in ((dw_ref, "dW"), (du_ref, "dU"), (daqk_ref, "dAqk"), (dq1_ref, "dq1"),
                          (dk1_ref, "dk1"), (dg1_ref, "dG1")):
            ref[pl.ds(pl.multiple_of(n * C, C), C), :] = grads[name]
        ddec_ref[pl.ds(pl.multiple_of(n * K, K), K), :] = grads["ddecay"]
        return dS_prev

    ds0_ref[...] = lax.fori_loop(0, N, body, dsT_ref[...])


def _full(shape):
    return pl.BlockSpec((None, None) + shape, lambda b, h: (b, h, 0, 0))


def state_fwd(q, k, G, W, U, Aqk, decay, s0, *, scale, C, out_dtype, with_states,
              block_sizes, interpret):
    """Forward state pass: ``o``, the final state and (``with_states``) the per-chunk
    start states ``h``."""
    B, H, Tp, K = q.shape
    V = U.shape[-1]
    N = Tp // C
    out_specs = [_full((Tp, V)), _full((K, V))] + ([_full((N * K, V))] if with_states else [])
    out_shape = fwd_out_shapes(B, H, Tp, K, V, N, out_dtype, with_states)
    return pl.pallas_call(
        functools.partial(_state_fwd_kernel, scale=scale, C=C, K=K, N=N, with_states=with_states),
        grid=(B, H),
        in_specs=[_full((Tp, K)), _full((Tp, K)), _full((Tp, K)), _full((Tp, K)),
                  _full((Tp, V)), _full((Tp, C)), _full((N * K, 1)), _full((K, V))],
        out_specs=out_specs, out_shape=out_shape,
        compiler_params=_triton_params(block_sizes.state_num_warps, block_sizes.num_stages),
        interpret=interpret, name="kda_state_fwd_gpu",
    )(q, k, G, W, U, Aqk, decay, s0)


def state_bwd(q, k, G, W, U, Aqk, decay, h, dO, dsT, *, scale, C, block_sizes, interpret):
    """Backward state pass, an in-kernel loop over the chunks in reverse."""
    B, H, Tp, K = q.shape
    V = U.shape[-1]
    N = Tp // C
    return pl.pallas_call(
        functools.partial(_state_bwd_kernel, scale=scale, C=C, K=K, N=N),
        grid=(B, H),
        in_specs=[_full((Tp, K)), _full((Tp, K)), _full((Tp, K)), _full((Tp, K)),
                  _full((Tp, V)), _full((Tp, C)), _full((N * K, 1)), _full((N * K, V)),
                  _full((Tp, V)), _full((K, V))],
        out_specs=[_full((Tp, K)), _full((Tp, V)), _full((Tp, C)), _full((Tp, K)),
                   _full((Tp, K)), _full((Tp, K)), _full((N * K, 1)), _full((K, V))],
        out_shape=bwd_out_shapes(B, H, Tp, K, V, C, N),
        compiler_params=_triton_params(block_sizes.state_num_warps, block_sizes.num_stages),
        interpret=interpret, name="kda_state_bwd_gpu",
    )(q, k, G, W, U, Aqk, decay, h, dO, dsT)
