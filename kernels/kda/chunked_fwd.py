"""Forward of the chunked XLA path: chunk-major inputs, per-chunk matrices, state scan.

For every chunk of ``C`` tokens, all chunks at once (``intra_forward``):

    Akk[i, j] = beta_i sum_d k_id k_jd exp(G_id - G_jd)      (j <  i)
    Aqk[i, j] =        sum_d q_id k_jd exp(G_id - G_jd)      (j <= i)
    Tinv = (I + Akk)^-1          W = Tinv (beta exp(G) k)          U = Tinv (beta v)

(``Tinv`` is kda.md's ``T``; the decayed scores and the inverse come from
``chunked_decay.py``). Then one short sequential scan over the ``T / C`` chunks carries
the float32 state ``S`` (``K x V``; ``state_forward``):

    Vn = U - W S                          # values minus what S already predicts
    S' = exp(G_last)[:, None] S + (exp(G_last - G) k)^T Vn

and, once every chunk's start state ``S`` and ``Vn`` are known, all chunks at once:

    O  = (exp(G) q) S + Aqk Vn            # inter-chunk part + intra-chunk part

``core_fwd`` is the forward rule of the ``custom_vjp`` in ``chunked.py``; its residuals
are the caller's arrays plus ``Tinv``, the score matrices, ``W``, the chunk start states
``h`` and ``Vn``. The chunk-major copies, ``G`` and the decay factors are not kept: the
backward (``chunked_bwd.py``) recomputes them with ``chunk_inputs`` after the forward
(``after``), so that XLA neither merges them with the forward's copies nor computes them
early.

Layout: chunk-major ``[N, B H, C, D]``; batch and heads share one axis (a size-1 batch
axis between the others made XLA:CPU copy every product's output).
"""
from __future__ import annotations

import functools

import jax.numpy as jnp
from jax import lax

from kernels.kda.chunked_decay import (chunk_cumsum, chunk_decays, einsum, leaf_index,
                                       scores, switch_leaf, unit_lower_inverse)


def to_chunk_major(x, C):
    """``[B, T, H, (D)] -> [N, B H, C, (D)]`` (T a multiple of C). Batch and heads are
    one axis: a size-1 batch axis between the others made XLA:CPU copy every product's
    output into its layout."""
    B, T, H = x.shape[:3]
    x = jnp.moveaxis(x.reshape((B, T // C, C) + x.shape[2:]), (1, 2), (0, 3))
    return x.reshape((T // C, B * H, C) + x.shape[4:])


def from_chunk_major(x, B):
    """Inverse of ``to_chunk_major`` (``B``: the batch size)."""
    N, BH, C = x.shape[:3]
    x = x.reshape((N, B, BH // B, C) + x.shape[3:])
    return jnp.moveaxis(x, (0, 3), (1, 2)).reshape((B, N * C, BH // B) + x.shape[4:])


def after(x):
    """A float32 zero that XLA cannot compute before ``x`` (a scalar element of x enters
    it), and that stays zero if that element is inf or NaN. Adding it to an array makes
    the work on that array wait for ``x``: it orders the segments (``chunked.py``) and
    keeps the backward's recomputations apart from the forward's."""
    e = x[(0,) * x.ndim]
    return (e != e).astype(jnp.float32) * 0.0


def chunk_inputs(C, scale, q, k, v, g, beta):
    """Caller's ``[B, T, H, *]`` arrays -> chunk-major ``q`` (scaled), ``k``, ``v``, ``g``,
    ``beta`` and ``G = cumsum(g)`` within each chunk. The forward computes them, and the
    backward computes them again rather than keeping them (module docstring)."""
    q, k, v, g, beta = (to_chunk_major(x, C) for x in (q, k, v, g, beta))
    return q * scale, k, v, g, beta, chunk_cumsum(g)


def intra_forward(q, k, v, G, g, beta, leaf_idx):
    """Per-chunk matrices; inputs ``[..., C, *]`` float32 (q already scaled), beta
    ``[..., C]``. Returns ``Akk_raw`` (strict, without beta), ``Aqk``, ``Tinv``, ``W``,
    ``U``."""
    akk_raw, aqk = switch_leaf(leaf_idx, g, functools.partial(scores, strict=(True, False)),
                               (k, q), k, G)
    Tinv = unit_lower_inverse(beta[..., :, None] * akk_raw)
    b = beta[..., None]
    W = einsum("...ij,...jd->...id", Tinv, b * jnp.exp(G) * k)
    U = einsum("...ij,...jd->...id", Tinv, b * v)
    return akk_raw, aqk, Tinv, W, U


def state_forward(W, U, Kg, decay, S0):
    """Scan over chunks; returns the final state and, per chunk, its start state and Vn."""

    def step(S, xs):
        W_c, U_c, Kg_c, decay_c = xs
        Vn = U_c - einsum("zck,zkv->zcv", W_c, S)
        S_next = decay_c[..., :, None] * S + einsum("zck,zcv->zkv", Kg_c, Vn)
        return S_next, (S, Vn)

    S_T, (h, Vn) = lax.scan(step, S0, (W, U, Kg, decay))
    return S_T, h, Vn


def core_fwd(C, scale, q_in, k_in, v_in, g_in, beta_in, S0):
    """Forward rule of ``chunked._chunked_core``: ``((O, S_T), residuals)``."""
    q, k, v, g, beta, G = chunk_inputs(C, scale, q_in, k_in, v_in, g_in, beta_in)
    leaf_idx = leaf_index(G)
    akk_raw, aqk, Tinv, W, U = intra_forward(q, k, v, G, g, beta, leaf_idx)
    eG, kdec, decay = chunk_decays(G, g, leaf_idx)
    B = q_in.shape[0]
    S_T, h, Vn = state_forward(W, U, k * kdec, decay, S0.reshape((-1,) + S0.shape[2:]))
    O = einsum("...ck,...kv->...cv", q * eG, h) + einsum("...ij,...jv->...iv", aqk, Vn)
    return ((from_chunk_major(O, B), S_T.reshape(S0.shape)),
            (q_in, k_in, v_in, g_in, beta_in, leaf_idx, akk_raw, aqk, Tinv, W, h, Vn))
