"""KDA Pallas kernels for TPU (Mosaic).

* Intra-chunk kernels: the shared ones of ``pallas_common.py`` with every grid axis
  ``"parallel"``.
* State pass: grid ``(B, H, N)`` with the chunk axis ``"arbitrary"`` (sequential); the
  state lives in a VMEM scratch buffer across grid steps; the reverse pass visits chunks
  through a reversed ``index_map``. Per-chunk math: ``pallas_state.step_fwd`` /
  ``step_bwd``.

Every function takes ``[B, H, Tp, D]`` arrays (``Tp`` a multiple of the chunk ``C``) and
the same keywords as its twin in ``pallas_gpu.py``; ``pallas.py`` picks the module.
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.kda import pallas_common
from kernels.kda.pallas_state import bwd_out_shapes, fwd_out_shapes, step_bwd, step_fwd

_F32 = jnp.float32


# ----------------------------------------------------------------------------- intra-chunk
def _intra_params():
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"))


def intra_fwd(q, k, v, g, beta, *, scale, C, block_sizes=None, interpret):
    """``W, U, Aqk`` per chunk (``pallas_common.intra_fwd``)."""
    return pallas_common.intra_fwd(q, k, v, g, beta, scale=scale, C=C,
                                   compiler_params=_intra_params(), interpret=interpret)


def intra_bwd(q, k, v, g, beta, dW, dU, dAqk, dq1, dk1, dG1, *, scale, C, block_sizes=None,
              interpret):
    """``dq, dk, dv, dG, dbeta`` through the intra-chunk matrices."""
    return pallas_common.intra_bwd(q, k, v, g, beta, dW, dU, dAqk, dq1, dk1, dG1, scale=scale,
                                   C=C, compiler_params=_intra_params(), interpret=interpret)


# ----------------------------------------------------------------------------- state pass
def _state_fwd_kernel(q_ref, k_ref, g_ref, gs_ref, w_ref, u_ref, a_ref, d_ref, s0_ref,
                      o_ref, sT_ref, *rest, scale, with_states):
    if with_states:
        h_ref, s_scr = rest
    else:
        (s_scr,) = rest
    n = pl.program_id(2)

    @pl.when(n == 0)
    def _():
        s_scr[...] = s0_ref[...]

    S = s_scr[...]
    if with_states:
        h_ref[...] = S
    o, S_next = step_fwd(q_ref[...], k_ref[...], g_ref[...], gs_ref[...], w_ref[...],
                         u_ref[...], a_ref[...], d_ref[...], S, scale)
    o_ref[...] = o.astype(o_ref.dtype)
    s_scr[...] = S_next

    @pl.when(n == pl.num_programs(2) - 1)
    def _():
        sT_ref[...] = S_next


def _state_bwd_kernel(q_ref, k_ref, g_ref, gs_ref, w_ref, u_ref, a_ref, d_ref, h_ref, do_ref,
                      dsT_ref, dw_ref, du_ref, daqk_ref, dq1_ref, dk1_ref, dg1_ref, dgs_ref,
                      ddec_ref, ds0_ref, ds_scr, *, scale):
    n = pl.program_id(2)

    @pl.when(n == 0)
    def _():
        ds_scr[...] = dsT_ref[...]

    grads, dS_prev = step_bwd(q_ref[...], k_ref[...], g_ref[...], gs_ref[...], w_ref[...],
                              u_ref[...], a_ref[...], d_ref[...], h_ref[...], do_ref[...],
                              ds_scr[...], scale)
    for ref, name in ((dw_ref, "dW"), (du_ref, "dU"), (daqk_ref, "dAqk"), (dq1_ref, "dq1"),
                      (dk1_ref, "dk1"), (dg1_ref, "dG1"), (dgs_ref, "dGs"),
                      (ddec_ref, "ddecay")):
        ref[...] = grads[name]
    ds_scr[...] = dS_prev

    @pl.when(n == pl.num_programs(2) - 1)
    def _():
        ds0_ref[...] = dS_prev


def _state_specs(C, K, V, reverse, N):
    nidx = (lambda n: N - 1 - n) if reverse else (lambda n: n)
    chunk = lambda D: pl.BlockSpec((None, None, C, D), lambda b, h, n: (b, h, nidx(n), 0))
    per_chunk_kv = pl.BlockSpec((None, None, K, V), lambda b, h, n: (b, h, nidx(n), 0))
    per_chunk_k1 = pl.BlockSpec((None, None, K, 1), lambda b, h, n: (b, h, nidx(n), 0))
    whole_state = pl.BlockSpec((None, None, K, V), lambda b, h, n: (b, h, 0, 0))
    return chunk, per_chunk_kv, per_chunk_k1, whole_state


def _state_params():
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def state_fwd(q, k, G, Gs, W, U, Aqk, decay, s0, *, scale, C, out_dtype, with_states,
              block_sizes=None, interpret):
    """Forward state pass: ``o``, the final state and (``with_states``) the per-chunk
    start states ``h``. ``G`` / ``Gs``: in-chunk prefix / suffix sums of the log-decays
    (``pallas.chunk_sums``). ``block_sizes`` is unused on TPU."""
    B, H, Tp, K = q.shape
    V = U.shape[-1]
    N = Tp // C
    chunk, per_kv, per_k1, whole = _state_specs(C, K, V, False, N)
    out_specs = [chunk(V), whole] + ([per_kv] if with_states else [])
    out_shape = fwd_out_shapes(B, H, Tp, K, V, N, out_dtype, with_states)
    return pl.pallas_call(
        functools.partial(_state_fwd_kernel, scale=scale, with_states=with_states),
        grid=(B, H, N),
        in_specs=[chunk(K), chunk(K), chunk(K), chunk(K), chunk(K), chunk(V), chunk(C), per_k1,
                  whole],
        out_specs=out_specs, out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((K, V), _F32)],
        compiler_params=_state_params(), interpret=interpret, name="kda_state_fwd_tpu",
    )(q, k, G, Gs, W, U, Aqk, decay, s0)


def state_bwd(q, k, G, Gs, W, U, Aqk, decay, h, dO, dsT, *, scale, C, block_sizes=None,
              interpret):
    """Backward state pass, chunks in reverse (through a reversed ``index_map``)."""
    B, H, Tp, K = q.shape
    V = U.shape[-1]
    N = Tp // C
    chunk, per_kv, per_k1, whole = _state_specs(C, K, V, True, N)
    return pl.pallas_call(
        functools.partial(_state_bwd_kernel, scale=scale),
        grid=(B, H, N),
        in_specs=[chunk(K), chunk(K), chunk(K), chunk(K), chunk(K), chunk(V), chunk(C), per_k1,
                  per_kv, chunk(V), whole],
        out_specs=[chunk(K), chunk(V), chunk(C), chunk(K), chunk(K), chunk(K), chunk(K), per_k1,
                   whole],
        out_shape=bwd_out_shapes(B, H, Tp, K, V, C, N),
        scratch_shapes=[pltpu.VMEM((K, V), _F32)],
        compiler_params=_state_params(), interpret=interpret, name="kda_state_bwd_tpu",
    )(q, k, G, Gs, W, U, Aqk, decay, h, dO, dsT)
