"""Pallas KDA, shared by both backends: the intra-chunk kernels (the per-chunk math of
the state pass is in ``pallas_state.py``).

Inputs are in ``[B, H, T, D]`` layout. The intra-chunk kernels take the per-token
log-decays ``g``; the state pass takes their in-chunk prefix sums ``G`` (inclusive) and
suffix sums ``Gs`` (exclusive, ``= G_last - G``), computed in XLA by the caller
(``pallas.chunk_sums``). What is here is backend-neutral; the backend files add
compiler parameters and the state-pass kernels:

* ``pallas_tpu.py`` (Mosaic) and ``pallas_gpu.py`` (Triton) call ``intra_fwd`` /
  ``intra_bwd`` with their own compiler parameters;
* both build their state-pass kernels from ``pallas_state.py`` (``step_fwd`` /
  ``step_bwd``, output shapes), which uses the float32 products defined here.

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

Exponents (beyond kda.md's numerical care). Every decay exponent is a sum of
the ``g`` terms it spans, never a difference of cumulative sums: with strong decays
``|G|`` reaches hundreds within a chunk, so ``G_i - G_j`` from rounded ``G`` values keeps
only ``|G| * 6e-8`` absolute accuracy, which is the relative error of every neighbour's
decay factor, and ``dG`` (made of those neighbour terms once the diagonal cancels) had
about that relative error. Off-diagonal blocks: ``G_t - G_r`` through the reference row
in one product of ``g`` with a 0/+-1 matrix (``_anchored``); diagonal blocks: each pair's
exponent summed term by term (``_pair_decay``); ``exp(G)`` for ``W``: a product with the
triangle of ones (``_prefix``).

Backward (``intra_bwd``) recomputes the same matrices and, given ``dW, dU, dAqk`` and
the partial ``dq, dk, dG`` of the state pass, returns ``dq, dk, dv, dG, dbeta``:

    dTinv = dU (beta v)^T + dW (beta e^G k)^T,   dA = -Tinv^T dTinv Tinv^T  (strictly lower)

and the gradients of the decayed score matrices, which are again decayed products
(``sum_j M_ij y_j exp(G_i - G_j)`` and its transpose) evaluated with the same
reference-row factorisation. ``dG`` is the gradient w.r.t. the prefix-type sums (each
pair ``(i, j)`` adds its term at ``i`` and subtracts it at ``j``); the caller's reverse
cumulative sum makes it ``dg``. The diagonal of ``Aqk`` (decay 1) is kept out of ``dG``,
where its terms cancel exactly, instead of being cancelled in rounding.
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


def _prefix(g):
    """``G = cumsum(g)`` within the chunk (inclusive), ``[C, D]``: one product with the
    lower triangle of ones, so each entry is a sum of its own ``g`` terms only."""
    C = g.shape[0]
    return dot((_iota((C, C), 1) <= _iota((C, C), 0)).astype(_F32), g)


def _anchored(g, a, C):
    """``G_t - G_r`` for every row ``t`` (``r = 16 a``), ``[C, D]``, summed from ``g``:
    ``sum_{r < s <= t} g_s`` for ``t >= r`` and ``-sum_{t < s <= r} g_s`` for ``t < r``
    (one product with a 0/+-1 matrix). Never a difference of two cumulative sums: with
    strong decays ``|G|`` reaches hundreds within a chunk, and ``G_t - G_r`` taken from
    rounded ``G`` values would keep only ``|G| * 6e-8`` absolute accuracy, i.e. that
    relative error in every neighbour's decay factor (about 1e-5 at g ~ -6 per step)."""
    t, s = _iota((C, C), 0), _iota((C, C), 1)
    r = a * SUB
    sign = jnp.where((r < s) & (s <= t), 1.0, jnp.where((t < s) & (s <= r), -1.0, 0.0))
    return dot(sign, g)


def _pair_decay(g_ref, lo, cols, width):
    """``exp(G_i - G_j)`` on the diagonal block of rows ``[lo, lo + 16)``, ``[16, 16, D]``
    on the key channels ``cols``, for ``j <= i`` (1 above the diagonal).

    The exponent ``sum_{j < s <= i} g_s`` is summed term by term from ``g`` (``s``
    ascending, so every partial sum lies between 0 and the exponent), not as a
    difference of cumulative sums: a pair's decay factor then has relative error about
    ``(i - j) * 6e-8 * |exponent|``, tiny where the factor is not already negligible."""
    i3 = _iota((SUB, SUB, 1), 0)
    j3 = _iota((SUB, SUB, 1), 1)

    def add(s, expo):
        g_s = g_ref[pl.ds(lo + s, 1), cols][None]  # [1, 1, D]
        return expo + jnp.where((j3 < s) & (s <= i3), g_s, 0.0)

    return jnp.exp(lax.fori_loop(1, SUB, add, jnp.zeros((SUB, SUB, width), _F32)))


def _ref_row_factors(g, a, C):
    """Row-/column-masked decay factors through reference row ``r = 16 a``, from the
    per-token log-decays ``g [C, D]`` (``_anchored``).

    Returns ``left [C, D] = exp(G_i - G_r)`` on rows of block ``a`` (else 0) and
    ``right [C, D] = exp(G_r - G_j)`` on rows ``j < 16 a`` (else 0); both exponents <= 0.
    """
    row = _iota((C, 1), 0)
    in_a = (row >= a * SUB) & (row < (a + 1) * SUB)
    before = row < a * SUB
    H = _anchored(g, a, C)
    left = jnp.where(in_a, jnp.exp(jnp.where(in_a, H, 0.0)), 0.0)
    right = jnp.where(before, jnp.exp(jnp.where(before, -H, 0.0)), 0.0)
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
            left, right = _ref_row_factors(g_ref[:, cols], a, C)
            k = k_ref[:, cols].astype(_F32)
            q = q_ref[:, cols].astype(_F32) * scale
            kr = k * right
            akk_off = akk_off + dot_t(k * left, kr)
            aqk = aqk + dot_t(q * left, kr)
            # Diagonal block, pairwise (masked below, once summed over the tiles).
            k_a = k_ref[pl.ds(lo, SUB), cols].astype(_F32)
            q_a = q_ref[pl.ds(lo, SUB), cols].astype(_F32) * scale
            decay = _pair_decay(g_ref, lo, cols, bk)
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
        eG = jnp.exp(_prefix(g_ref[:, cols]))
        w_ref[:, cols] = dot(Tinv, beta * eG * k_ref[:, cols].astype(_F32))
        return carry

    def u_tile(t, carry):
        cols = _cols(t, bv, nv)
        u_ref[:, cols] = dot(Tinv, beta * v_ref[:, cols].astype(_F32))
        return carry

    _loop(nk, w_tile, ())
    _loop(nv, u_tile, ())
    aqk_ref[...] = aqk


def _decayed_row_col(Ms, xs, g_ref, y_ref, cols, C):
    """For lower-triangular ``Ms`` (``[C, C]`` each) with row operands ``xs`` (refs, each
    with a scale or ``None``) and the column operand ``y``: per matrix
    ``row_i = sum_j M_ij y_j e^{G_i - G_j}`` and, summed over the matrices,
    ``col_j = sum_i M_ij x_i e^{G_i - G_j}`` (``[C, cols]``), stably, on the key channels
    ``cols``. The decay factors of each block (``_ref_row_factors``, ``_pair_decay``) are
    formed once for all the matrices."""
    def load(ref, rows, x_scale=None):
        x = ref[rows, cols].astype(_F32)
        return x if x_scale is None else x * x_scale

    g = g_ref[:, cols]
    y = load(y_ref, slice(None))
    x_full = [load(x_ref, slice(None), x_scale) for x_ref, x_scale in xs]
    r = _iota((C, 1), 0)
    c = _iota((1, C), 1)

    def block(a, carry):
        rows, col = carry
        lo = pl.multiple_of(a * SUB, SUB)
        left, right = _ref_row_factors(g, a, C)
        decay = _pair_decay(g_ref, lo, cols, g.shape[-1])
        in_a = (r >= lo) & (r < lo + SUB)
        P = _selector(C, lo)
        y_r = y * right
        y_a = load(y_ref, pl.ds(lo, SUB))
        new_rows = []
        for M, row, x, (x_ref, x_scale) in zip(Ms, rows, x_full, xs):
            M_a = jnp.where(in_a & (c < lo), M, 0.0)  # block row a, columns before it
            row = row + left * dot(M_a, y_r)
            col = col + right * t_dot(M_a, x * left)
            md = dot_t(dot(P, M), P)[:, :, None] * decay  # [16, 16] diagonal block, decayed
            x_a = load(x_ref, pl.ds(lo, SUB), x_scale)
            new_rows.append(row + t_dot(P, jnp.sum(md * y_a[None, :, :], axis=1)))
            col = col + t_dot(P, jnp.sum(md * x_a[:, None, :], axis=0))
        return tuple(new_rows), col

    zeros = jnp.zeros(y.shape, _F32)
    return lax.fori_loop(0, C // SUB, block, ((zeros,) * len(Ms), zeros))


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
        bk_t = beta * jnp.exp(_prefix(g_ref[:, cols])) * k_ref[:, cols].astype(_F32)
        return acc + dot_t(dw_ref[:, cols], bk_t)

    dTinv = _loop(nk, dtinv_k, _loop(nv, dtinv_v, jnp.zeros((C, C), _F32)))
    dTinv = jnp.where(c <= r, dTinv, 0.0)
    dA = jnp.where(c < r, -t_dot(Tinv, dot_t(dTinv, Tinv)), 0.0)  # d(beta * Akk_raw)
    bdA = beta * dA
    # Aqk's diagonal (decay exp(0) = 1) is taken apart: its terms in dq and dk are
    # plain products, and in dG they cancel exactly (q_i d_i k_i - k_i d_i q_i), so they
    # are left out there rather than summed into the rows and columns and cancelled in
    # rounding (with strong decays the true dG is small next to them, and the reverse
    # cumulative sum that turns dG into dg would carry the residue).
    daqk = daqk_ref[...]
    daqk_diag = jnp.sum(jnp.where(c == r, daqk, 0.0), axis=1, keepdims=True)  # [C, 1]
    daqk = jnp.where(c < r, daqk, 0.0)
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
        eG = jnp.exp(_prefix(g_ref[:, cols]))
        eGk = eG * k
        d_bk = t_dot(Tinv, dw_ref[:, cols])
        # Akk_raw[i, j] = sum_d k_id k_jd e^{G_id - G_jd}, cotangent beta_i dA_ij; and
        # Aqk[i, j] = sum_d q_id k_jd e^{G_id - G_jd}, cotangent dAqk: its strict lower
        # triangle here, the diagonal (decay 1) apart. Both have column operand k.
        (kk_row, qk_row), col = _decayed_row_col(
            (bdA, daqk), ((k_ref, None), (q_ref, scale)), g_ref, k_ref, cols, C)
        dk = beta * eG * d_bk + dk1_ref[:, cols] + kk_row + col + daqk_diag * q
        dq = dq1_ref[:, cols] + qk_row + daqk_diag * k
        dG = beta * eGk * d_bk + dg1_ref[:, cols] + k * kk_row + q * qk_row - k * col
        dq_ref[:, cols] = (dq * scale).astype(dq_ref.dtype)
        dk_ref[:, cols] = dk.astype(dk_ref.dtype)
        dg_ref[:, cols] = dG
        return dbeta + jnp.sum(eGk * d_bk, axis=1, keepdims=True)

    dbeta = _loop(nv, v_grads, dbeta)
    db_ref[...] = _loop(nk, k_grads, dbeta)


def _chunk_spec(C, D):
    return pl.BlockSpec((None, None, C, D), lambda b, h, n: (b, h, n, 0))


def intra_fwd(q, k, v, g, beta, *, scale, C, compiler_params, interpret, block_k=None,
              block_v=None):
    """``q, k: [B, H, Tp, K]``, ``v: [B, H, Tp, V]``, ``g`` (per-token log-decays, float32):
    ``[B, H, Tp, K]``, ``beta: [B, H, Tp, 1]`` -> ``W [B, H, Tp, K]``, ``U [B, H, Tp, V]``,
    ``Aqk [B, H, Tp, C]`` (float32).

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
    )(q, k, v, g, beta)


def intra_bwd(q, k, v, g, beta, dW, dU, dAqk, dq1, dk1, dG1, *, scale, C, compiler_params,
              interpret, block_k=None, block_v=None):
    """Intra-chunk backward; returns ``dq, dk, dv`` (input dtypes), ``dbeta`` (f32) and
    ``dG`` (f32): the gradient w.r.t. the in-chunk prefix sums of ``g`` (with the state
    pass's ``dG1`` added), whose reverse cumulative sum is its part of ``dg``.

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
    )(q, k, v, g, beta, dW, dU, dAqk, dq1, dk1, dG1)
