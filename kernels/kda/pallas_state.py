"""Pallas kernels for the sequential inter-chunk state pass of KDA (forward, backward).

Per (batch, head) the float32 state ``S [K, V]`` is carried across chunks:

    forward, chunk n:   Vn = U - W S
                        O  = (e^G q) S + Aqk Vn
                        S  = decay[:, None] S + (e^{G_last - G} k)^T Vn

With ``with_states=True`` the forward also writes the state at the *start* of every
chunk (``h``, ``[B, H, N*K, V]``), which the backward needs. The backward kernel walks
the chunks in reverse with ``dS`` (the gradient w.r.t. the state at the end of the
chunk) and emits, per chunk, ``dW, dU, dAqk`` for the intra-chunk backward, the parts of
``dq, dk, dG`` that come through ``e^G q`` and ``e^{G_last - G} k``, ``ddecay`` and
finally the gradient of the initial state.

Two variants with the same per-chunk math:

* TPU (Mosaic): grid ``(B, H, N)`` with the chunk axis ``"arbitrary"`` (sequential);
  the state lives in a VMEM scratch buffer across grid steps; the reverse pass visits
  chunks through a reversed ``index_map``.
* GPU (Triton): grid ``(B, H)``; each program holds full-sequence blocks and loops over
  chunks with ``lax.fori_loop``, keeping the state in registers as the loop carry.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from kernels.kda.pallas_intra import dot, dot_t, t_dot

_F32 = jnp.float32


# ----------------------------------------------------------------------------- math
def _step_fwd(q, k, G, G_last, W, U, Aqk, decay_col, S, scale):
    q = q.astype(_F32) * scale
    k = k.astype(_F32)
    vn = U - dot(W, S)
    o = dot(q * jnp.exp(G), S) + dot(Aqk, vn)
    kg = k * jnp.exp(G_last - G)
    return o, decay_col * S + t_dot(kg, vn)


def _step_bwd(q, k, G, G_last, W, U, Aqk, decay_col, S, dO, dS, scale):
    """Reverse step. ``S``: state at chunk start, ``dS``: grad of state at chunk end."""
    C = q.shape[0]
    q = q.astype(_F32) * scale
    k = k.astype(_F32)
    dO = dO.astype(_F32)
    eG = jnp.exp(G)
    qg = q * eG
    kdec = jnp.exp(G_last - G)
    kg = k * kdec
    vn = U - dot(W, S)
    dvn = t_dot(Aqk, dO) + dot(kg, dS)
    r = lax.broadcasted_iota(jnp.int32, (C, C), 0)
    c = lax.broadcasted_iota(jnp.int32, (C, C), 1)
    daqk = jnp.where(c <= r, dot_t(dO, vn), 0.0)
    dqg = dot_t(dO, S)
    dkg = dot_t(vn, dS)
    last = lax.broadcasted_iota(jnp.int32, (C, 1), 0) == C - 1
    dG1 = qg * dqg - kg * dkg + jnp.where(last, jnp.sum(kg * dkg, axis=0, keepdims=True), 0.0)
    ddecay = jnp.sum(S * dS, axis=1, keepdims=True)  # [K, 1]
    dW = -dot_t(dvn, S)
    dS_prev = decay_col * dS + t_dot(qg, dO) - t_dot(W, dvn)
    return dict(dW=dW, dU=dvn, dAqk=daqk, dq1=eG * dqg, dk1=kdec * dkg, dG1=dG1,
                ddecay=ddecay), dS_prev


# ----------------------------------------------------------------------------- shapes
def _fwd_out_shapes(B, H, Tp, K, V, N, out_dtype, with_states):
    """Outputs of the forward state pass (both variants): ``o``, final state, and the
    per-chunk start states ``h`` when ``with_states``."""
    sds = jax.ShapeDtypeStruct
    shapes = [sds((B, H, Tp, V), out_dtype), sds((B, H, K, V), _F32)]
    return shapes + ([sds((B, H, N * K, V), _F32)] if with_states else [])


def _bwd_out_shapes(B, H, Tp, K, V, C, N):
    """Outputs of the backward state pass (both variants): ``dW, dU, dAqk, dq1, dk1,
    dG1`` per token, ``ddecay`` per chunk, and the initial state's gradient."""
    sds = jax.ShapeDtypeStruct
    return [sds((B, H, Tp, K), _F32), sds((B, H, Tp, V), _F32), sds((B, H, Tp, C), _F32),
            sds((B, H, Tp, K), _F32), sds((B, H, Tp, K), _F32), sds((B, H, Tp, K), _F32),
            sds((B, H, N * K, 1), _F32), sds((B, H, K, V), _F32)]


# ----------------------------------------------------------------------------- TPU
def _tpu_fwd_kernel(q_ref, k_ref, g_ref, w_ref, u_ref, a_ref, d_ref, s0_ref,
                    o_ref, sT_ref, *rest, scale, C, with_states):
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
    o, S_next = _step_fwd(q_ref[...], k_ref[...], g_ref[...], g_ref[pl.ds(C - 1, 1), :],
                          w_ref[...], u_ref[...], a_ref[...], d_ref[...], S, scale)
    o_ref[...] = o.astype(o_ref.dtype)
    s_scr[...] = S_next

    @pl.when(n == pl.num_programs(2) - 1)
    def _():
        sT_ref[...] = S_next


def _tpu_bwd_kernel(q_ref, k_ref, g_ref, w_ref, u_ref, a_ref, d_ref, h_ref, do_ref, dsT_ref,
                    dw_ref, du_ref, daqk_ref, dq1_ref, dk1_ref, dg1_ref, ddec_ref, ds0_ref,
                    ds_scr, *, scale, C):
    n = pl.program_id(2)

    @pl.when(n == 0)
    def _():
        ds_scr[...] = dsT_ref[...]

    grads, dS_prev = _step_bwd(q_ref[...], k_ref[...], g_ref[...], g_ref[pl.ds(C - 1, 1), :],
                               w_ref[...], u_ref[...], a_ref[...], d_ref[...], h_ref[...],
                               do_ref[...], ds_scr[...], scale)
    for ref, name in ((dw_ref, "dW"), (du_ref, "dU"), (daqk_ref, "dAqk"), (dq1_ref, "dq1"),
                      (dk1_ref, "dk1"), (dg1_ref, "dG1"), (ddec_ref, "ddecay")):
        ref[...] = grads[name]
    ds_scr[...] = dS_prev

    @pl.when(n == pl.num_programs(2) - 1)
    def _():
        ds0_ref[...] = dS_prev


def _tpu_specs(C, K, V, reverse, N):
    nidx = (lambda n: N - 1 - n) if reverse else (lambda n: n)
    chunk = lambda D: pl.BlockSpec((None, None, C, D), lambda b, h, n: (b, h, nidx(n), 0))
    per_chunk_kv = pl.BlockSpec((None, None, K, V), lambda b, h, n: (b, h, nidx(n), 0))
    per_chunk_k1 = pl.BlockSpec((None, None, K, 1), lambda b, h, n: (b, h, nidx(n), 0))
    whole_state = pl.BlockSpec((None, None, K, V), lambda b, h, n: (b, h, 0, 0))
    return chunk, per_chunk_kv, per_chunk_k1, whole_state


def _tpu_params():
    return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "arbitrary"))


def state_fwd_tpu(q, k, G, W, U, Aqk, decay, s0, *, scale, C, out_dtype, with_states,
                  interpret):
    B, H, Tp, K = q.shape
    V = U.shape[-1]
    N = Tp // C
    chunk, per_kv, per_k1, whole = _tpu_specs(C, K, V, False, N)
    out_specs = [chunk(V), whole] + ([per_kv] if with_states else [])
    out_shape = _fwd_out_shapes(B, H, Tp, K, V, N, out_dtype, with_states)
    return pl.pallas_call(
        functools.partial(_tpu_fwd_kernel, scale=scale, C=C, with_states=with_states),
        grid=(B, H, N),
        in_specs=[chunk(K), chunk(K), chunk(K), chunk(K), chunk(V), chunk(C), per_k1, whole],
        out_specs=out_specs, out_shape=out_shape,
        scratch_shapes=[pltpu.VMEM((K, V), _F32)],
        compiler_params=_tpu_params(), interpret=interpret, name="kda_state_fwd_tpu",
    )(q, k, G, W, U, Aqk, decay, s0)


def state_bwd_tpu(q, k, G, W, U, Aqk, decay, h, dO, dsT, *, scale, C, interpret):
    B, H, Tp, K = q.shape
    V = U.shape[-1]
    N = Tp // C
    chunk, per_kv, per_k1, whole = _tpu_specs(C, K, V, True, N)
    return pl.pallas_call(
        functools.partial(_tpu_bwd_kernel, scale=scale, C=C),
        grid=(B, H, N),
        in_specs=[chunk(K), chunk(K), chunk(K), chunk(K), chunk(V), chunk(C), per_k1, per_kv,
                  chunk(V), whole],
        out_specs=[chunk(K), chunk(V), chunk(C), chunk(K), chunk(K), chunk(K), per_k1, whole],
        out_shape=_bwd_out_shapes(B, H, Tp, K, V, C, N),
        scratch_shapes=[pltpu.VMEM((K, V), _F32)],
        compiler_params=_tpu_params(), interpret=interpret, name="kda_state_bwd_tpu",
    )(q, k, G, W, U, Aqk, decay, h, dO, dsT)


# ----------------------------------------------------------------------------- GPU
def _rows(ref, n, size):
    return ref[pl.ds(pl.multiple_of(n * size, size), size), :]


def _gpu_fwd_kernel(q_ref, k_ref, g_ref, w_ref, u_ref, a_ref, d_ref, s0_ref,
                    o_ref, sT_ref, *rest, scale, C, K, N, with_states):
    h_ref = rest[0] if with_states else None

    def body(n, S):
        if with_states:
            h_ref[pl.ds(pl.multiple_of(n * K, K), K), :] = S
        G = _rows(g_ref, n, C)
        G_last = g_ref[pl.ds(n * C + C - 1, 1), :]
        o, S_next = _step_fwd(_rows(q_ref, n, C), _rows(k_ref, n, C), G, G_last,
                              _rows(w_ref, n, C), _rows(u_ref, n, C), _rows(a_ref, n, C),
                              _rows(d_ref, n, K), S, scale)
        o_ref[pl.ds(pl.multiple_of(n * C, C), C), :] = o.astype(o_ref.dtype)
        return S_next

    sT_ref[...] = lax.fori_loop(0, N, body, s0_ref[...])


def _gpu_bwd_kernel(q_ref, k_ref, g_ref, w_ref, u_ref, a_ref, d_ref, h_ref, do_ref, dsT_ref,
                    dw_ref, du_ref, daqk_ref, dq1_ref, dk1_ref, dg1_ref, ddec_ref, ds0_ref,
                    *, scale, C, K, N):
    def body(i, dS):
        n = N - 1 - i
        G = _rows(g_ref, n, C)
        G_last = g_ref[pl.ds(n * C + C - 1, 1), :]
        grads, dS_prev = _step_bwd(_rows(q_ref, n, C), _rows(k_ref, n, C), G, G_last,
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


def _gpu_params(num_warps=4):
    from jax.experimental.pallas import triton as pltriton
    return pltriton.CompilerParams(num_warps=num_warps, num_stages=1)


def state_fwd_gpu(q, k, G, W, U, Aqk, decay, s0, *, scale, C, out_dtype, with_states,
                  interpret):
    B, H, Tp, K = q.shape
    V = U.shape[-1]
    N = Tp // C
    out_specs = [_full((Tp, V)), _full((K, V))] + ([_full((N * K, V))] if with_states else [])
    out_shape = _fwd_out_shapes(B, H, Tp, K, V, N, out_dtype, with_states)
    return pl.pallas_call(
        functools.partial(_gpu_fwd_kernel, scale=scale, C=C, K=K, N=N, with_states=with_states),
        grid=(B, H),
        in_specs=[_full((Tp, K)), _full((Tp, K)), _full((Tp, K)), _full((Tp, K)),
                  _full((Tp, V)), _full((Tp, C)), _full((N * K, 1)), _full((K, V))],
        out_specs=out_specs, out_shape=out_shape,
        compiler_params=_gpu_params(), interpret=interpret, name="kda_state_fwd_gpu",
    )(q, k, G, W, U, Aqk, decay, s0)


def state_bwd_gpu(q, k, G, W, U, Aqk, decay, h, dO, dsT, *, scale, C, interpret):
    B, H, Tp, K = q.shape
    V = U.shape[-1]
    N = Tp // C
    return pl.pallas_call(
        functools.partial(_gpu_bwd_kernel, scale=scale, C=C, K=K, N=N),
        grid=(B, H),
        in_specs=[_full((Tp, K)), _full((Tp, K)), _full((Tp, K)), _full((Tp, K)),
                  _full((Tp, V)), _full((Tp, C)), _full((N * K, 1)), _full((N * K, V)),
                  _full((Tp, V)), _full((K, V))],
        out_specs=[_full((Tp, K)), _full((Tp, V)), _full((Tp, C)), _full((Tp, K)),
                   _full((Tp, K)), _full((Tp, K)), _full((N * K, 1)), _full((K, V))],
        out_shape=_bwd_out_shapes(B, H, Tp, K, V, C, N),
        compiler_params=_gpu_params(), interpret=interpret, name="kda_state_bwd_gpu",
    )(q, k, G, W, U, Aqk, decay, h, dO, dsT)
