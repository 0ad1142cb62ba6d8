"""Backward of the chunked XLA path: the hand-derived gradient of kda.md, batched over chunks.

``jax.grad`` of the xla path does not differentiate through the forward ops:
``chunked._chunked_core`` is a ``custom_vjp`` whose backward rule is ``core_bwd``
(the same math as the Pallas kernels):

1. recompute the chunk-major inputs, ``G`` and the decay factors from the caller's
   arrays, after the forward (``chunked_fwd.after``);
2. a reverse scan over chunks for the state gradient ``dS``, which also takes the
   products with ``dS``, so the per-chunk ``dS`` (the largest tensor) is never stored;
3. in parallel over chunks (``bwd_parallel``): the gradients through the state pass's
   inputs, then through ``Tinv = (I + beta Akk)^-1`` (kda.md's ``T``) with
   ``dA = -Tinv^T dTinv Tinv^T`` on the strict lower triangle, and the gradients of the
   decayed score matrices, which are again decayed products evaluated over the same
   blocks and factors (``chunked_decay.decayed_row_col``);
4. ``dg`` is the reverse cumulative sum of ``dG`` within each chunk.

The partial gradients are completed inside the ``lax.switch`` over leaf sizes, so their
pieces are freed there instead of being fused into the final sums (CPU memory: see
``chunked.py``).
"""
from __future__ import annotations

from jax import lax

from kernels.kda.chunked_decay import (chunk_decays, chunk_reverse_cumsum, decayed_row_col,
                                       einsum, switch_leaf, tril)
from kernels.kda.chunked_fwd import after, chunk_inputs, from_chunk_major, to_chunk_major


def bwd_parallel(q, k, v, G, g, beta, leaf_idx, eG, kdec, decay, akk_raw, aqk, Tinv, h,
                 Vn, dO, dkg, ddecay, dVn):
    """Everything of the backward after the reverse state scan, batched over chunks:
    gradients through the state pass's inputs, then through ``Tinv`` and the scores."""
    Qg, Kg = q * eG, k * kdec
    daqk = tril(einsum("...iv,...jv->...ij", dO, Vn), strict=False)
    dqg = einsum("...cv,...kv->...ck", dO, h)
    dW = -einsum("...cv,...kv->...ck", dVn, h)
    dU = dVn
    dq = eG * dqg
    dk = kdec * dkg
    dG = Qg * dqg - Kg * dkg
    last = einsum("...ck,...ck->...k", Kg, dkg) + ddecay * decay  # through G_last
    dG = dG.at[..., -1, :].add(last)

    # Intra-chunk: W = Tinv (beta e^G k), U = Tinv (beta v), Tinv = (I + beta Akk_raw)^-1.
    b = beta[..., None]
    bk, bv = b * eG * k, b * v
    dTinv = tril(einsum("...iv,...jv->...ij", dU, bv) + einsum("...id,...jd->...ij", dW, bk),
                 strict=False)
    d_bv = einsum("...ji,...jv->...iv", Tinv, dU)
    d_bk = einsum("...ji,...jd->...id", Tinv, dW)
    dA = tril(-einsum("...ji,...jk->...ik", Tinv, einsum("...ij,...kj->...ik", dTinv, Tinv)),
              strict=True)
    dbeta = (einsum("...cv,...cv->...c", v, d_bv) + einsum("...ck,...ck->...c", eG * k, d_bk)
             + einsum("...ij,...ij->...i", dA, akk_raw))
    dv = b * d_bv
    dk = dk + b * eG * d_bk
    dG = dG + bk * d_bk
    # Decayed scores: Akk_raw (rows and columns k, cotangent beta dA), Aqk (rows q,
    # columns k, cotangent dAqk).
    # The partial gradients go into the branch and are completed there: they are then
    # materialised before it, and what they were made of is freed early (XLA would
    # otherwise fuse their element-wise pieces into the final sums and keep every piece
    # alive until the end).
    dq, dk, dG = switch_leaf(leaf_idx, g, add_decayed_row_col, (b * dA, daqk), (k, q), k, G,
                             (dq, dk, dG))
    return dq, dk, dv, dG, dbeta


def add_decayed_row_col(Ms, xs, y, G, acc, *, leaf, g=None):
    """``acc = (dq, dk, dG)`` plus the cotangents of the score matrices ``Ms = (Akk
    cotangent, Aqk cotangent)`` with ``xs = (k, q)`` and ``y = k`` (``decayed_row_col``)."""
    (kk_row, qk_row), col, dG_scores = decayed_row_col(Ms, xs, y, G, leaf=leaf, g=g)
    dq, dk, dG = acc
    return dq + qk_row, dk + kk_row + col, dG + dG_scores


def core_bwd(C, scale, res, cts):
    """Backward rule of ``chunked._chunked_core`` (module docstring)."""
    q_in, k_in, v_in, g_in, beta_in, leaf_idx, akk_raw, aqk, Tinv, W, h, Vn = res
    dO, dS_T = cts
    # Recompute the chunk-major copies, G and the decays from the caller's arrays, after
    # the forward (``after``): merged with the forward's, they would be kept alive from
    # the start of the forward to the end of the backward.
    wait = after(Vn) + after(dS_T)
    q, k, v, g, beta, G = chunk_inputs(
        C, scale, *(x + wait for x in (q_in, k_in, v_in, g_in, beta_in)))
    dO = to_chunk_major(dO, C)
    eG, kdec, decay = chunk_decays(G, g, leaf_idx)
    # State pass, reverse over chunks. dS is the gradient of the state at a chunk's end:
    #   dVn = Aqk^T dO + Kg dS,   dS_start = decay dS + Qg^T dO - W^T dVn.
    # The products with dS itself (dKg = Vn dS^T, ddecay = sum_v h dS) are taken inside
    # the scan, so the per-chunk dS ([N, B H, K, V], the largest tensor here) is never
    # stored.
    def step(dS, xs):
        aqk_c, q_c, eG_c, dO_c, k_c, kdec_c, W_c, decay_c, Vn_c, h_c = xs
        dVn = (einsum("zji,zjv->ziv", aqk_c, dO_c)
               + einsum("zck,zkv->zcv", k_c * kdec_c, dS))
        dkg = einsum("zcv,zkv->zck", Vn_c, dS)
        ddecay = einsum("zkv,zkv->zk", h_c, dS)
        dS_start = (decay_c[..., :, None] * dS + einsum("zck,zcv->zkv", q_c * eG_c, dO_c)
                    - einsum("zck,zcv->zkv", W_c, dVn))
        return dS_start, (dVn, dkg, ddecay)

    B = q_in.shape[0]
    dS0, (dVn, dkg, ddecay) = lax.scan(
        step, dS_T.reshape((-1,) + dS_T.shape[2:]),
        (aqk, q, eG, dO, k, kdec, W, decay, Vn, h), reverse=True)
    dq, dk, dv, dG, dbeta = bwd_parallel(q, k, v, G, g, beta, leaf_idx, eG, kdec, decay,
                                         akk_raw, aqk, Tinv, h, Vn, dO, dkg, ddecay, dVn)
    grads = (dq * scale, dk, dv, chunk_reverse_cumsum(dG), dbeta)
    return tuple(from_chunk_major(x, B) for x in grads) + (dS0.reshape(dS_T.shape),)
