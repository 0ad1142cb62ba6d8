"""Pallas KDA, shared by both backends: the per-chunk math of the sequential state pass.

The backends (``pallas_tpu.py``, ``pallas_gpu.py``) differ only in how they walk the
chunks and keep the state; each step here is one chunk of one (batch, head), float32,
with the products of ``pallas_common.py``.

State pass, per (batch, head), the float32 state ``S [K, V]`` carried across chunks:

    forward, chunk n:   Vn = U - W S
                        O  = (e^G q) S + Aqk Vn
                        S  = decay[:, None] S + (e^{Gs} k)^T Vn       (Gs = G_last - G)

With ``with_states=True`` the forward also writes the state at the *start* of every
chunk (``h``, ``[B, H, N*K, V]``), which the backward needs. The backward walks the
chunks in reverse with ``dS`` (the gradient w.r.t. the state at the end of the chunk)
and emits, per chunk, ``dW, dU, dAqk`` for the intra-chunk backward, the parts of
``dq, dk`` that come through ``e^G q`` and ``e^{Gs} k`` with the log-decay gradients
w.r.t. ``G`` (``dG1``) and ``Gs`` (``dGs``) kept apart (``step_bwd``), ``ddecay`` and
finally the gradient of the initial state.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from kernels.kda.pallas_common import dot, dot_t, t_dot

_F32 = jnp.float32


def step_fwd(q, k, G, Gs, W, U, Aqk, decay_col, S, scale):
    """Forward step. ``G``: in-chunk prefix sums of g (inclusive), ``Gs``: suffix sums
    (exclusive, ``G_last - G`` summed directly; ``pallas.chunk_sums``)."""
    q = q.astype(_F32) * scale
    k = k.astype(_F32)
    vn = U - dot(W, S)
    o = dot(q * jnp.exp(G), S) + dot(Aqk, vn)
    kg = k * jnp.exp(Gs)
    return o, decay_col * S + t_dot(kg, vn)


def step_bwd(q, k, G, Gs, W, U, Aqk, decay_col, S, dO, dS, scale):
    """Reverse step. ``S``: state at chunk start, ``dS``: grad of state at chunk end.

    The log-decay gradients come in two parts, by the sums they differentiate:
    ``dG1 = qg * dqg`` w.r.t. the prefix sums ``G`` (``dg`` gets its reverse cumulative
    sum) and ``dGs = kg * dkg`` w.r.t. the suffix sums ``Gs`` (``dg`` gets its exclusive
    forward cumulative sum, ``dg_t += sum_{i < t} dGs_i``). Folding ``dGs`` into ``dG1``
    as ``-dGs_i`` plus its total at the last row would make ``dg_t`` a total minus a
    suffix: the total is dominated by the last tokens (``e^{Gs} ~ 1``), so every
    ``dg_t`` of the chunk would carry its rounding."""
    C = q.shape[0]
    q = q.astype(_F32) * scale
    k = k.astype(_F32)
    dO = dO.astype(_F32)
    eG = jnp.exp(G)
    qg = q * eG
    kdec = jnp.exp(Gs)
    kg = k * kdec
    vn = U - dot(W, S)
    dvn = t_dot(Aqk, dO) + dot(kg, dS)
    r = lax.broadcasted_iota(jnp.int32, (C, C), 0)
    c = lax.broadcasted_iota(jnp.int32, (C, C), 1)
    daqk = jnp.where(c <= r, dot_t(dO, vn), 0.0)
    dqg = dot_t(dO, S)
    dkg = dot_t(vn, dS)
    ddecay = jnp.sum(S * dS, axis=1, keepdims=True)  # [K, 1]
    dW = -dot_t(dvn, S)
    dS_prev = decay_col * dS + t_dot(qg, dO) - t_dot(W, dvn)
    return dict(dW=dW, dU=dvn, dAqk=daqk, dq1=eG * dqg, dk1=kdec * dkg, dG1=qg * dqg,
                dGs=kg * dkg, ddecay=ddecay), dS_prev


def fwd_out_shapes(B, H, Tp, K, V, N, out_dtype, with_states):
    """Outputs of the forward state pass (both variants): ``o``, final state, and the
    per-chunk start states ``h`` when ``with_states``."""
    sds = jax.ShapeDtypeStruct
    shapes = [sds((B, H, Tp, V), out_dtype), sds((B, H, K, V), _F32)]
    return shapes + ([sds((B, H, N * K, V), _F32)] if with_states else [])


def bwd_out_shapes(B, H, Tp, K, V, C, N):
    """Outputs of the backward state pass (both variants): ``dW, dU, dAqk, dq1, dk1,
    dG1, dGs`` per token, ``ddecay`` per chunk, and the initial state's gradient."""
    sds = jax.ShapeDtypeStruct
    per_k = sds((B, H, Tp, K), _F32)
    return [per_k, sds((B, H, Tp, V), _F32), sds((B, H, Tp, C), _F32), per_k, per_k, per_k,
            per_k, sds((B, H, N * K, 1), _F32), sds((B, H, K, V), _F32)]
