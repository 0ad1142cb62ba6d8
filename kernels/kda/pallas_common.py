"""Pallas KDA, shared by both backends: the intra-chunk kernels and the state-pass math.

Inputs are in ``[B, H, T, D]`` layout with ``G`` the within-chunk cumulative log-decay
(computed in XLA by the caller, ``pallas.py``). What is here is backend-neutral; the
backend files add compiler parameters and the state-pass kernels:

* ``pallas_tpu.py`` (Mosaic) and ``pallas_gpu.py`` (Triton) call ``intra_fwd`` /
  ``intra_bwd`` with their own compiler parameters;
* both build their state-pass kernels from ``step_fwd`` / ``step_bwd`` and the output
  shapes ``fwd_out_shapes`` / ``bwd_out_shapes``.

Intra-chunk kernels. One grid step handles one chunk of one (batch, head): grid
``(B, H, N)``, every step independent ("parallel"). ``block_k`` / ``block_v`` (GPU only;
``None``, the TPU's choice, means whole head dims) make them sum the ``[C, C]`` matrices
over column tiles of K / V channels and write per-channel outputs tile by tile, which
bounds what is live at once (``pallas_gpu.py`` has the estimates).

Forward (``intra_fwd``), per chunk of ``C`` tokens, everything in float32:

* ``Akk`` (strictly lower, without beta) and ``Aqk`` (lower incl. diagonal) with the
  sub-chunk stability trick of ``chunked_decay.py``. To stay inside what both Mosaic and
  Triton lower (2-D dots, masks, no value slicing), the off-diagonal blocks of row block
  ``a`` come from one ``[C, K] x [K, C]`` product of row-masked/column-masked factors
  scaled through the reference row ``r = 16 a``; the 16x16 diagonal blocks are computed
  pairwise and placed into the ``C x C`` matrix with 0/1 selector products (exact).
* ``Tinv = (I + beta Akk)^-1`` (kda.md's ``T``) by block forward substitution: each
  16x16 diagonal block is inverted row by row (forward substitution), then block rows
  are filled in order, ``Tinv_a = X_aa (P_a - A_a,<a Tinv_<a)``.
* outputs ``W = Tinv (beta exp(G) k)``, ``U = Tinv (beta v)`` and ``Aqk``.

Backward (``intra_bwd``) recomputes the same matrices and, given ``dW, dU, dAqk`` and
the partial ``dq, dk, dG`` of the state pass, returns ``dq, dk, dv, dG, dbeta``:

    dTinv = dU (beta v)^T + dW (beta e^G k)^T,   dA = -Tinv^T dTinv Tinv^T  (strictly lower)

and the gradients of the decayed score matrices, which are again decayed products
(``sum_j M_ij y_j exp(G_i - G_j)`` and its transpose) evaluated with the same
reference-row factorisation.

State pass, per (batch, head), the float32 state ``S [K, V]`` carried across chunks:

    forward, chunk n:   Vn = U - W S
                        O  = (e^G q) S + Aqk Vn
                        S  = decay[:, None] S + (e^{G_last - G} k)^T Vn

With ``with_states=True`` the forward also writes the state at the *start* of every
chunk (``h``, ``[B, H, N*K, V]``), which the backward needs. The backward walks the
chunks in reverse with ``dS`` (the gradient w.r.t. the state at the end of the chunk)
and emits, per chunk, ``dW, dU, dAqk`` for the intra-chunk backward, the parts of
``dq, dk, dG`` that come through ``e^G q`` and ``e^{G_last - G} k``, ``ddecay`` and
finally the gradient of the initial state.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels.kda.chunked_decay import SUB_CHUNK

SUB = SUB_CHUNK  # sub-chunk rows (16, as in the xla path)
_HIGHEST = lax.Precision.HIGHEST
_F32 = jnp.float32


def dot(a, b):
    """``a @ b`` in float32."""
    return lax.dot_general(a, b, (((1,), (0,)), ((), ())), precision=_HIGHEST,
                           preferred_element_type=_F32)


def dot_t(a, b):
    """``a @ b^T`` in float32."""
    return lax.dot_general(a, b, (((1,), (1,)), ((), ())), precision=_HIGHEST,
                           preferred_element_type=_F32)


def t_dot(a, b):
    """``a^T @ b`` in float32."""
    return lax.dot_general(a, b, (((0,), (0,)), ((), ())), precision=_HIGHEST,
                           preferred_element_type=_F32)


def _iota(shape, dim):
    return lax.broadcasted_iota(jnp.int32, shape, dim)


def _selector(C, lo):
    """``P``: ``[16, C]`` 0/1 matrix with ``P[i, lo + i] = 1`` (block starting at ``lo``)."""
    return (_iota((SUB, C), 1) == _iota((SUB, C), 0) + lo).astype(_F32)


def _block_rows(ref, lo, scale=None):
    x = ref[pl.ds(lo, SUB), :].astype(_F32)
    return x if scale is None else x * scale


def _pair_decay(G_a):
    """``exp(G_i - G_j)`` on a diagonal block, ``[16, 16, K]``, masked to ``j <= i``."""
    i3 = _iota((SUB, SUB, 1), 0)
    j3 = _iota((SUB, SUB, 1), 1)
    expo = G_a[:, None, :] - G_a[None, :, :]
    return jnp.exp(jnp.where(j3 <= i3, expo, 0.0))


def _ref_row_factors(G, G_r, a, C):
    """Row-/column-masked decay factors through reference row ``r = 16 a``.

    Returns ``left [C, K] = exp(G_i - G_r)`` on rows of block ``a`` (else 0) and
    ``right [C, K] = exp(G_r - G_j)`` on rows ``j < 16 a`` (else 0); both exponents <= 0.
    """
    row = _iota((C, 1), 0)
    in_a = (row >= a * SUB) & (row < (a + 1) * SUB)
    before = row < a * SUB
    left = jnp.where(in_a, jnp.exp(jnp.where(in_a, G - G_r, 0.0)), 0.0)
    right = jnp.where(before, jnp.exp(jnp.where(before, G_r - G, 0.0)), 0.0)
    return left, right


def _unit_lower_inverse16(A):
    """``(I + A)^-1`` for strictly lower ``A [16, 16]`` by forward substitution, one row
    per step: ``X_i = e_i - sum_{m<i} A_im X_m`` (row ``i`` picked by a mask)."""
    r16 = _iota((SUB, 1), 0)
    eye16 = (_iota((SUB, SUB), 0) == _iota((SUB, SUB), 1)).astype(_F32)
    return lax.fori_loop(1, SUB, lambda i, X: X - dot(jnp.where(r16 == i, A, 0.0), X), eye16)


def _cols(t, block, n):
    """Column index of tile ``t`` of ``n`` tiles of width ``block``: all columns when
    ``n == 1`` (the TPU kernels, and GPU head dims <= the tile), else ``pl.ds``."""
    return slice(None) if n == 1 else pl.ds(pl.multiple_of(t * block, block), block)


def _loop(n, body, init):
    """``lax.fori_loop(0, n, body, init)``, or one plain call when ``n == 1``."""
    return body(0, init) if n == 1 else lax.fori_loop(0, n, body, init)


def _num_tiles(D, block):
    block = D if block is None else min(block, D)
    return block, D // block


def _scores_and_inverse(q_ref, k_ref, g_ref, b_ref, scale, C, bk):
    """Shared forward math: returns ``(Akk_raw, Aqk, Tinv)`` for one chunk (float32).

    The ``[C, C]`` score matrices are sums over key channels; they are accumulated over
    column tiles of ``bk`` channels (one tile when ``bk >= K``), so what is live at once
    is ``[C, bk]`` factors and ``[16, 16, bk]`` pairwise diagonal-block terms."""
    K = k_ref.shape[-1]
    bk, nk = _num_tiles(K, bk)
    ns = C // SUB
    i2, j2 = _iota((SUB, SUB), 0), _iota((SUB, SUB), 1)
    zeros16 = jnp.zeros((SUB, SUB), _F32)

    def block(a, carry):
        akk_off, akk_diag, aqk, x_diag = carry
        lo = pl.multiple_of(a * SUB, SUB)

        def k_tile(t, acc):
            akk_off, aqk, skk, sqk = acc
            cols = _cols(t, bk, nk)
            # Off-diagonal blocks of row block a (empty for a == 0: `right` is all zero).
            left, right = _ref_row_factors(g_ref[:, cols], g_ref[pl.ds(lo, 1), cols], a, C)
            k = k_ref[:, cols].astype(_F32)
            q = q_ref[:, cols].astype(_F32) * scale
            kr = k * right
            akk_off = akk_off + dot_t(k * left, kr)
            aqk = aqk + dot_t(q * left, kr)
            # Diagonal block, pairwise (masked below, once summed over the tiles).
            k_a = k_ref[pl.ds(lo, SUB), cols].astype(_F32)
            q_a = q_ref[pl.ds(lo, SUB), cols].astype(_F32) * scale
            decay = _pair_decay(g_ref[pl.ds(lo, SUB), cols])
            skk = skk + jnp.sum(k_a[:, None, :] * k_a[None, :, :] * decay, axis=2)
            sqk = sqk + jnp.sum(q_a[:, None, :] * k_a[None, :, :] * decay, axis=2)
            return akk_off, aqk, skk, sqk

        akk_off, aqk, skk, sqk = _loop(nk, k_tile, (akk_off, aqk, zeros16, zeros16))
        skk = jnp.where(j2 < i2, skk, 0.0)
        sqk = jnp.where(j2 <= i2, sqk, 0.0)
        P = _selector(C, lo)
        akk_diag = akk_diag + t_dot(P, dot(skk, P))
        aqk = aqk + t_dot(P, dot(sqk, P))
        X = _unit_lower_inverse16(b_ref[pl.ds(lo, SUB), :] * skk)
        x_diag = x_diag + t_dot(P, dot(X, P))
        return akk_off, akk_diag, aqk, x_diag

    zeros = jnp.zeros((C, C), _F32)
    akk_off, akk_diag, aqk, x_diag = lax.fori_loop(0, ns, block, (zeros,) * 4)
    # Block forward substitution over block rows: T_a = X_aa (P_a - A_a,<a T_<a).
    a_off = b_ref[...] * akk_off
    row = _iota((C, 1), 0)

    def block_row(a, Tinv):
        rows_a = (row >= a * SUB) & (row < (a + 1) * SUB)
        return Tinv - dot(x_diag, dot(jnp.where(rows_a, a_off, 0.0), Tinv))

    Tinv = lax.fori_loop(1, ns, block_row, x_diag)
    return akk_off + akk_diag, aqk, Tinv


def _intra_fwd_kernel(q_ref, k_ref, v_ref, g_ref, b_ref, w_ref, u_ref, aqk_ref, *, scale, C,
                      bk, bv):
    _, aqk, Tinv = _scores_and_inverse(q_ref, k_ref, g_ref, b_ref, scale, C, bk)
    beta = b_ref[...]
    bk, nk = _num_tiles(k_ref.shape[-1], bk)
    bv, nv = _num_tiles(v_ref.shape[-1], bv)

    def w_tile(t, carry):
        cols = _cols(t, bk, nk)
        w_ref[:, cols] = dot(Tinv, beta * jnp.exp(g_ref[:, cols]) * k_ref[:, cols].astype(_F32))
        return carry

    def u_tile(t, carry):
        cols = _cols(t, bv, nv)
        u_ref[:, cols] = dot(Tinv, beta * v_ref[:, cols].astype(_F32))
        return carry

    _loop(nk, w_tile, ())
    _loop(nv, u_tile, ())
    aqk_ref[...] = aqk


def _decayed_row_col(M, g_ref, x_ref, y_ref, cols, x_scale, C):
    """For lower-triangular ``M [C, C]``: ``row_i = sum_j M_ij y_j e^{G_i - G_j}`` and
    ``col_j = sum_i M_ij x_i e^{G_i - G_j}`` (both ``[C, cols]``), stably, on the key
    channels ``cols`` (x, y, G read from the refs there; x times ``x_scale``)."""
    G = g_ref[:, cols]
    x = x_ref[:, cols].astype(_F32)
    x = x if x_scale is None else x * x_scale
    y = y_ref[:, cols].astype(_F32)
    r = _iota((C, 1), 0)
    c = _iota((1, C), 1)

    def block(a, carry):
        row_out, col_out = carry
        lo = pl.multiple_of(a * SUB, SUB)
        left, right = _ref_row_factors(G, g_ref[pl.ds(lo, 1), cols], a, C)
        in_a = (r >= lo) & (r < lo + SUB)
        M_a = jnp.where(in_a & (c < lo), M, 0.0)  # block row a, columns before it
        row_out = row_out + left * dot(M_a, y * right)
        col_out = col_out + right * t_dot(M_a, x * left)
        P = _selector(C, lo)
        M_aa = dot_t(dot(P, M), P)  # [16, 16] diagonal block
        md = M_aa[:, :, None] * _pair_decay(g_ref[pl.ds(lo, SUB), cols])
        y_a = y_ref[pl.ds(lo, SUB), cols].astype(_F32)
        x_a = x_ref[pl.ds(lo, SUB), cols].astype(_F32)
        x_a = x_a if x_scale is None else x_a * x_scale
        row_out = row_out + t_dot(P, jnp.sum(md * y_a[None, :, :], axis=1))
        col_out = col_out + t_dot(P, jnp.sum(md * x_a[:, None, :], axis=0))
        return row_out, col_out

    zeros = jnp.zeros(x.shape, _F32)
    return lax.fori_loop(0, C // SUB, block, (zeros, zeros))


def _intra_bwd_kernel(q_ref, k_ref, v_ref, g_ref, b_ref, dw_ref, du_ref, daqk_ref,
                      dq1_ref, dk1_ref, dg1_ref,
                      dq_ref, dk_ref, dv_ref, dg_ref, db_ref, *, scale, C, bk, bv):
    """Phase 1 builds the ``[C, C]`` matrices (sums over all key/value channels, tile by
    tile); phase 2 writes the per-channel gradients one column tile at a time (every
    output column depends only on its own channel and the ``[C, C]`` matrices)."""
    akk_raw, _, Tinv = _scores_and_inverse(q_ref, k_ref, g_ref, b_ref, scale, C, bk)
    bk, nk = _num_tiles(k_ref.shape[-1], bk)
    bv, nv = _num_tiles(v_ref.shape[-1], bv)
    beta = b_ref[...]
    r = _iota((C, C), 0)
    c = _iota((C, C), 1)

    # dTinv = dU (beta v)^T + dW (beta e^G k)^T, lower incl. the diagonal.
    def dtinv_v(t, acc):
        cols = _cols(t, bv, nv)
        return acc + dot_t(du_ref[:, cols], beta * v_ref[:, cols].astype(_F32))

    def dtinv_k(t, acc):
        cols = _cols(t, bk, nk)
        bk_t = beta * jnp.exp(g_ref[:, cols]) * k_ref[:, cols].astype(_F32)
        return acc + dot_t(dw_ref[:, cols], bk_t)

    dTinv = _loop(nk, dtinv_k, _loop(nv, dtinv_v, jnp.zeros((C, C), _F32)))
    dTinv = jnp.where(c <= r, dTinv, 0.0)
    dA = jnp.where(c < r, -t_dot(Tinv, dot_t(dTinv, Tinv)), 0.0)  # d(beta * Akk_raw)
    bdA = beta * dA
    daqk = jnp.where(c <= r, daqk_ref[...], 0.0)
    dbeta = jnp.sum(dA * akk_raw, axis=1, keepdims=True)

    def v_grads(t, dbeta):
        cols = _cols(t, bv, nv)
        d_bv = t_dot(Tinv, du_ref[:, cols])
        dv_ref[:, cols] = (beta * d_bv).astype(dv_ref.dtype)
        return dbeta + jnp.sum(v_ref[:, cols].astype(_F32) * d_bv, axis=1, keepdims=True)

    def k_grads(t, dbeta):
        cols = _cols(t, bk, nk)
        q = q_ref[:, cols].astype(_F32) * scale
        k = k_ref[:, cols].astype(_F32)
        eGk = jnp.exp(g_ref[:, cols]) * k
        d_bk = t_dot(Tinv, dw_ref[:, cols])
        # Akk_raw[i, j] = sum_d k_id k_jd e^{G_id - G_jd}, cotangent beta_i dA_ij.
        kk_row, kk_col = _decayed_row_col(bdA, g_ref, k_ref, k_ref, cols, None, C)
        # Aqk[i, j] = sum_d q_id k_jd e^{G_id - G_jd}, cotangent dAqk (lower incl. diagonal).
        qk_row, qk_col = _decayed_row_col(daqk, g_ref, q_ref, k_ref, cols, scale, C)
        dk = beta * jnp.exp(g_ref[:, cols]) * d_bk + dk1_ref[:, cols] + kk_row + kk_col + qk_col
        dq = dq1_ref[:, cols] + qk_row
        dG = (beta * eGk * d_bk + dg1_ref[:, cols] + k * (kk_row - kk_col) + q * qk_row
              - k * qk_col)
        dq_ref[:, cols] = (dq * scale).astype(dq_ref.dtype)
        dk_ref[:, cols] = dk.astype(dk_ref.dtype)
        dg_ref[:, cols] = dG
        return dbeta + jnp.sum(eGk * d_bk, axis=1, keepdims=True)

    dbeta = _loop(nv, v_grads, dbeta)
    db_ref[...] = _loop(nk, k_grads, dbeta)


def _chunk_spec(C, D):
    return pl.BlockSpec((None, None, C, D), lambda b, h, n: (b, h, n, 0))


def intra_fwd(q, k, v, G, beta, *, scale, C, compiler_params, interpret, block_k=None,
              block_v=None):
    """``q, k, G: [B, H, Tp, K]``, ``v: [B, H, Tp, V]``, ``beta: [B, H, Tp, 1]`` ->
    ``W [B, H, Tp, K]``, ``U [B, H, Tp, V]``, ``Aqk [B, H, Tp, C]`` (float32).

    ``block_k`` / ``block_v``: in-kernel column tiles over K / V (``None``: whole)."""
    B, H, Tp, K = q.shape
    V = v.shape[-1]
    f32 = jax.ShapeDtypeStruct
    return pl.pallas_call(
        functools.partial(_intra_fwd_kernel, scale=scale, C=C, bk=block_k, bv=block_v),
        grid=(B, H, Tp // C),
        in_specs=[_chunk_spec(C, K), _chunk_spec(C, K), _chunk_spec(C, V), _chunk_spec(C, K),
                  _chunk_spec(C, 1)],
        out_specs=[_chunk_spec(C, K), _chunk_spec(C, V), _chunk_spec(C, C)],
        out_shape=[f32((B, H, Tp, K), _F32), f32((B, H, Tp, V), _F32), f32((B, H, Tp, C), _F32)],
        compiler_params=compiler_params, interpret=interpret, name="kda_intra_fwd",
    )(q, k, v, G, beta)


def intra_bwd(q, k, v, G, beta, dW, dU, dAqk, dq1, dk1, dG1, *, scale, C, compiler_params,
              interpret, block_k=None, block_v=None):
    """Intra-chunk backward; returns ``dq, dk, dv`` (input dtypes), ``dG``, ``dbeta`` (f32).

    ``block_k`` / ``block_v``: in-kernel column tiles over K / V (``None``: whole)."""
    B, H, Tp, K = q.shape
    V = v.shape[-1]
    sds = jax.ShapeDtypeStruct
    return pl.pallas_call(
        functools.partial(_intra_bwd_kernel, scale=scale, C=C, bk=block_k, bv=block_v),
        grid=(B, H, Tp // C),
        in_specs=[_chunk_spec(C, K), _chunk_spec(C, K), _chunk_spec(C, V), _chunk_spec(C, K),
                  _chunk_spec(C, 1), _chunk_spec(C, K), _chunk_spec(C, V), _chunk_spec(C, C),
                  _chunk_spec(C, K), _chunk_spec(C, K), _chunk_spec(C, K)],
        out_specs=[_chunk_spec(C, K), _chunk_spec(C, K), _chunk_spec(C, V), _chunk_spec(C, K),
                   _chunk_spec(C, 1)],
        out_shape=[sds(q.shape, q.dtype), sds(k.shape, k.dtype), sds(v.shape, v.dtype),
                   sds((B, H, Tp, K), _F32), sds((B, H, Tp, 1), _F32)],
        compiler_params=compiler_params, interpret=interpret, name="kda_intra_bwd",
    )(q, k, v, G, beta, dW, dU, dAqk, dq1, dk1, dG1)


# ----------------------------------------------------------------------------- state pass
# Per-chunk math of the sequential state pass; the backends (``pallas_tpu.py``,
# ``pallas_gpu.py``) differ only in how they walk the chunks and keep the state.
def step_fwd(q, k, G, G_last, W, U, Aqk, decay_col, S, scale):
    q = q.astype(_F32) * scale
    k = k.astype(_F32)
    vn = U - dot(W, S)
    o = dot(q * jnp.exp(G), S) + dot(Aqk, vn)
    kg = k * jnp.exp(G_last - G)
    return o, decay_col * S + t_dot(kg, vn)


def step_bwd(q, k, G, G_last, W, U, Aqk, decay_col, S, dO, dS, scale):
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


def fwd_out_shapes(B, H, Tp, K, V, N, out_dtype, with_states):
    """Outputs of the forward state pass (both variants): ``o``, final state, and the
    per-chunk start states ``h`` when ``with_states``."""
    sds = jax.ShapeDtypeStruct
    shapes = [sds((B, H, Tp, V), out_dtype), sds((B, H, K, V), _F32)]
    return shapes + ([sds((B, H, N * K, V), _F32)] if with_states else [])


def bwd_out_shapes(B, H, Tp, K, V, C, N):
    """Outputs of the backward state pass (both variants): ``dW, dU, dAqk, dq1, dk1,
    dG1`` per token, ``ddecay`` per chunk, and the initial state's gradient."""
    sds = jax.ShapeDtypeStruct
    return [sds((B, H, Tp, K), _F32), sds((B, H, Tp, V), _F32), sds((B, H, Tp, C), _F32),
            sds((B, H, Tp, K), _F32), sds((B, H, Tp, K), _F32), sds((B, H, Tp, K), _F32),
            sds((B, H, N * K, 1), _F32), sds((B, H, K, V), _F32)]
