"""Decay algebra of the chunked XLA path: decayed score matrices and the triangular inverse.

Within a chunk of ``C`` tokens, with ``G = cumsum(g)`` restarted at every chunk (so
``exp(G_i)`` is the total decay from the chunk start up to and including token i), the
chunked algorithm (``chunked.py``) needs lower-triangular *decayed scores*

    A[i, j] = sum_d x_id y_jd exp(G_id - G_jd)        (j < i, or j <= i)

(``scores``, ``decayed_scores``), their cotangents (``decayed_row_col``) and the inverse
``Tinv = (I + beta Akk)^-1`` of a unit lower-triangular matrix (``unit_lower_inverse``;
kda.md calls it ``T``). This module holds that algebra; ``chunked_fwd.py`` and
``chunked_bwd.py`` use it.

Stability. ``exp(G_i - G_j)`` for ``j <= i`` is at most 1, but ``exp(G_i)`` and
``exp(-G_j)`` separately are not: with strong decay (g ~ -10 per step) ``-G_j`` reaches
hundreds inside a chunk and ``exp(-G_j)`` overflows float32. The decayed products are
therefore built from blocks that are each factored through a *reference row* ``r``:

      exp(G_i - G_j) = exp(G_i - G_r) * exp(G_r - G_j).

kda.md's scheme (what the Pallas kernels do) uses sub-chunks of ``SUB_CHUNK = 16``: a
block of rows ``a`` and an earlier block of columns go through the first row of ``a``
(both exponents ``<= 0``), and the 16 x 16 diagonal blocks are computed pairwise. Here
the same factorisation is applied recursively, because the pairwise ``[16, 16, K]``
tensors cost far more than matrix products on CPU. Level by level (``b = C/2, C/4, ...,
1``), the lower-left ``b x b`` quadrant of every ``2b`` diagonal block is one product
through the first row of its lower half; both exponents are again ``<= 0``
(``level_factors``), and what is left at the bottom is the diagonal itself,
``exp(0) = 1``. This is exact for any decay: nothing is formed with a positive exponent.

Fast path. The recursion stops early at a *leaf* block size ``s`` (the whole chunk, else
16) when every leaf block's log-decay span ``G_first - G_last`` is at most
``LEAF_SPAN_MAX = 40`` in every channel. Such a leaf is one product through its first
row, whose factors lie in ``[exp(-40), exp(40)]``: no overflow, no underflow, and the
same rounding as the exact form (each output entry is a uniformly rescaled sum of the
same terms). ``leaf_index`` picks the largest safe leaf from the data; ``switch_leaf``
runs only that branch (``lax.switch``); strong decays fall back to the exact recursion
(leaf 1). Mild decays, as in training, take the fast path; the tests cover every branch.

Shapes: every function works on ``[..., C, K]`` operands and ``[..., C, C]`` matrices
with any leading batch axes (the chunked path uses ``[N, B H, ...]``).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

SUB_CHUNK = 16  # kda.md's sub-chunk: block size of the triangular inverse and of leaf 16
_HIGHEST = lax.Precision.HIGHEST


def einsum(spec, *operands):
    """``jnp.einsum`` at HIGHEST precision (float32 products on every backend)."""
    return jnp.einsum(spec, *operands, precision=_HIGHEST)


def tri_mask(n, strict):
    i = jnp.arange(n)
    return (i[None, :] < i[:, None]) if strict else (i[None, :] <= i[:, None])


def tril(x, *, strict: bool):
    return jnp.where(tri_mask(x.shape[-1], strict), x, 0.0)


# ----------------------------------------------------------------------------- decays
# Largest log-decay span a leaf block may have for its single-reference factorisation:
# its factors then stay within [exp(-40), exp(40)], far from float32 over- and underflow.
LEAF_SPAN_MAX = 40.0


def _halves(x, b):
    """``[..., C, D] -> (rows, cols)``, each ``[..., C / 2b, b, D]``: in every block of
    ``2b`` tokens, its second half (rows of the lower-left quadrant) and its first half
    (columns of that quadrant)."""
    *lead, C, D = x.shape
    x = x.reshape(*lead, C // (2 * b), 2, b, D)
    return x[..., 1, :, :], x[..., 0, :, :]


def _join_halves(rows, cols):
    """Inverse of ``_halves``: ``[..., nq, b, D]`` twice -> ``[..., 2 b nq, D]``."""
    *lead, nq, b, D = rows.shape
    return jnp.stack([cols, rows], axis=-3).reshape(*lead, 2 * b * nq, D)


def _blocks(x, s):
    *lead, C, D = x.shape
    return x.reshape(*lead, C // s, s, D)


def level_factors(G, b, g=None):
    """Decay factors of the level-``b`` quadrants through their reference rows.

    ``G [..., C, K]`` non-increasing along C. For every block of ``2b`` tokens with
    reference row ``r`` (the first row of its second half) returns
    ``L [..., nq, b, K] = exp(G_i - G_r)`` for the rows ``i >= r`` and
    ``R [..., nq, b, K] = exp(G_r - G_j)`` for the columns ``j < r``, so that
    ``exp(G_i - G_j) = L_i R_j`` with both exponents ``<= 0``.

    With ``g`` (the per-token log-decays, ``G = cumsum(g)``) the exponents are summed
    locally, ``G_i - G_r = g_{r+1} + ... + g_i``, instead of taken as differences of
    ``G``: with strong decays ``|G|`` reaches hundreds inside a chunk and the difference
    of two such values keeps only ``|G| * 6e-8`` absolute accuracy."""
    if g is None:
        G_rows, G_cols = _halves(G, b)
        G_ref = G_rows[..., :1, :]
        return jnp.exp(G_rows - G_ref), jnp.exp(G_ref - G_cols)
    g_rows, g_cols = _halves(g, b)
    g_ref = g_rows[..., :1, :]
    rows = jnp.cumsum(g_rows, axis=-2) - g_ref                    # G_i - G_r
    cols = lax.cumsum(g_cols, axis=g_cols.ndim - 2, reverse=True) - g_cols + g_ref  # G_r - G_j
    return jnp.exp(rows), jnp.exp(cols)


def leaf_factors(G, s):
    """Factors of the ``s x s`` diagonal (leaf) blocks through their first rows ``r``:
    ``L = exp(G_i - G_r) <= 1`` and ``R = exp(G_r - G_j) >= 1``, ``[..., C / s, s, K]``.
    ``exp(G_i - G_j) = L_i R_j``; finite only while the block's span ``G_r - G_last``
    is moderate (``leaf_index``)."""
    Gb = _blocks(G, s)
    G_ref = Gb[..., :1, :]
    return jnp.exp(Gb - G_ref), jnp.exp(G_ref - Gb)


def _levels(C, leaf):
    b = leaf
    while b < C:
        yield b
        b *= 2


def leaf_sizes(C):
    """Leaf sizes tried, fastest first: the whole chunk, 16, and 1 (always exact)."""
    return tuple(dict.fromkeys(s for s in (C, SUB_CHUNK, 1) if s <= C))


def leaf_index(G):
    """Index into ``leaf_sizes(C)`` of the largest leaf whose blocks all have a log-decay
    span ``<= LEAF_SPAN_MAX`` (a traced int32 scalar; the last entry, 1, always fits)."""
    sizes = leaf_sizes(G.shape[-2])
    idx = jnp.int32(len(sizes) - 1)
    for i in reversed(range(len(sizes) - 1)):
        Gb = _blocks(G, sizes[i])
        span = jnp.max(Gb[..., 0, :] - Gb[..., -1, :])
        idx = jnp.where(span <= LEAF_SPAN_MAX, jnp.int32(i), idx)
    return idx


def _diag_blocks(M, s):
    """``[..., C, C] -> [..., C / s, s, s]``: the ``s x s`` blocks on the diagonal."""
    *lead, C, _ = M.shape
    blocks = jnp.diagonal(M.reshape(*lead, C // s, s, C // s, s), axis1=-4, axis2=-2)
    return jnp.moveaxis(blocks, -1, -3)


def _quadrants(M, b):
    """Lower-left ``b x b`` quadrants of the ``2b`` diagonal blocks of ``M [..., C, C]``."""
    return _diag_blocks(M, 2 * b)[..., b:, :b]  # [..., nq, b, b]


# Quadrants of at most this size are formed with element-wise products: XLA:CPU runs
# batched dots of 1x1 and 2x2 blocks several times slower than the same arithmetic as
# broadcasts.
_SMALL = 2


def _block_scores(a, b):
    """``Q[..., i, j] = sum_d a[..., i, d] b[..., j, d]`` for ``[..., nq, s, K]`` operands."""
    if a.shape[-2] <= _SMALL:
        ones = jnp.ones((a.shape[-1],), a.dtype)
        return einsum("...ijd,d->...ij", a[..., :, None, :] * b[..., None, :, :], ones)
    return einsum("...qid,...qjd->...qij", a, b)


def decayed_scores(x, y, G, *, inclusive: bool, leaf: int = 1):
    """``A[i, j] = sum_d x_id y_jd exp(G_id - G_jd)`` on the lower triangle of each chunk.

    ``x, y, G``: ``[..., C, K]`` (G non-increasing along C, C a power of two). Returns
    ``[..., C, C]``, zero above the diagonal (and on it unless ``inclusive``). With the
    default ``leaf=1`` it never forms a positive exponent: see ``scores``.
    """
    return scores((x,), y, G, strict=(not inclusive,), leaf=leaf)[0]


def scores(xs, y, G, *, strict, leaf, g=None):
    """Decayed scores of row operands ``xs`` (tuple of ``[..., C, K]``) against one column
    operand ``y [..., C, K]``; ``strict``: one flag per row operand (strict or inclusive
    lower triangle). Returns a tuple of ``[..., C, C]``.

    The ``leaf x leaf`` diagonal blocks come first, each one product through its first row
    (``leaf_factors``; for ``leaf=1`` just ``x_i . y_i``). Then, level by level
    (``b = leaf, 2 leaf, ..., C/2``), the lower-left quadrant of every ``2b`` block is one
    product of the factors ``x L`` and ``y R`` (``level_factors``), placed between the two
    ``b`` blocks finished before."""
    C = y.shape[-2]
    if leaf == 1:
        out = [jnp.zeros(x.shape[:-1] + (1, 1), x.dtype) if st
               else einsum("...cd,...cd->...c", x, y)[..., None, None] for x, st in zip(xs, strict)]
    else:
        L, R = leaf_factors(G, leaf)
        yR = _blocks(y, leaf) * R
        out = [jnp.where(tri_mask(leaf, st), _block_scores(_blocks(x, leaf) * L, yR), 0.0)
               for x, st in zip(xs, strict)]
    for b in _levels(C, leaf):
        L, R = level_factors(G, b, g)
        y_cols = _halves(y, b)[1] * R
        for n, x in enumerate(xs):
            Q = _block_scores(_halves(x, b)[0] * L, y_cols)  # [..., nq, b, b]
            *lead, nb, _, _ = out[n].shape
            pairs = out[n].reshape(*lead, nb // 2, 2, b, b)
            top, bottom = pairs[..., 0, :, :], pairs[..., 1, :, :]
            out[n] = jnp.concatenate([jnp.concatenate([top, jnp.zeros_like(top)], axis=-1),
                                      jnp.concatenate([Q, bottom], axis=-1)], axis=-2)
    return tuple(D[..., 0, :, :] for D in out)


def decayed_row_col(Ms, xs, y, G, *, leaf, g=None):
    """Cotangents of decayed score matrices.

    For lower-triangular ``Ms`` (tuple of ``[..., C, C]``, one per score matrix, all with
    column operand ``y``) and their row operands ``xs`` returns

    * ``rows``: per matrix ``row_i = sum_j M_ij y_j exp(G_i - G_j)``,
    * ``col``: ``sum_n sum_i M^n_ij x^n_i exp(G_i - G_j)`` (summed over the matrices, as
      their gradients add up),
    * ``dG``: the matrices' gradient w.r.t. G, ``sum_n x^n row^n - y col``,

    all ``[..., C, K]``, over the same blocks as ``scores``: the leaf blocks, then every
    quadrant through its reference row (``row = L (M_Q (y R))``, ``col = R (M_Q^T (x L))``).
    """
    C = y.shape[-2]
    if leaf == 1:
        diags = [jnp.diagonal(M, axis1=-2, axis2=-1)[..., None] for M in Ms]  # [..., C, 1]
        rows = [[m * y] for m in diags]
        cols = [sum(m * x for m, x in zip(diags, xs))]
    else:
        L, R = leaf_factors(G, leaf)
        yR = _blocks(y, leaf) * R
        rows, c = [], 0.0
        for M, x in zip(Ms, xs):
            Mb = _diag_blocks(M, leaf)
            rows.append([(L * einsum("...qij,...qjd->...qid", Mb, yR)).reshape(y.shape)])
            c = c + einsum("...qij,...qid->...qjd", Mb, _blocks(x, leaf) * L)
        cols = [(R * c).reshape(y.shape)]
    for b in _levels(C, leaf):
        L, R = level_factors(G, b, g)
        yR = _halves(y, b)[1] * R
        c = 0.0
        for n, (M, x) in enumerate(zip(Ms, xs)):
            MQ = _quadrants(M, b)  # [..., nq, b, b]
            xL = _halves(x, b)[0] * L
            if b <= _SMALL:  # element-wise, see _SMALL
                r = sum(MQ[..., :, j, None] * yR[..., None, j, :] for j in range(b))
                c = c + sum(MQ[..., i, :, None] * xL[..., i, None, :] for i in range(b))
            else:
                r = einsum("...qij,...qjd->...qid", MQ, yR)
                c = c + einsum("...qij,...qid->...qjd", MQ, xL)
            rows[n].append(_join_halves(L * r, jnp.zeros_like(r)))
        cols.append(_join_halves(jnp.zeros_like(c), R * c))
    # One sum at the end (XLA fuses it into a single pass; accumulating level by level
    # copied the full-size accumulators once per level).
    rows_full, col_full = [sum(r) for r in rows], sum(cols)
    # The G-gradient, sum_n x_n row_n - y col. The diagonal terms (i = j, decay 1) cancel
    # in it exactly; in the exact branch they are separate and left out, so that their
    # rounding does not remain in dG (with strong decays the true dG is small next to
    # them, and dg = reverse cumsum(dG) would carry the residue).
    if leaf == 1 and len(cols) > 1:
        rows_g, col_g = [sum(r[1:]) for r in rows], sum(cols[1:])
    else:
        rows_g, col_g = rows_full, col_full
    dG = sum(x * r for x, r in zip(xs, rows_g)) - y * col_g
    return rows_full, col_full, dG


def switch_leaf(leaf_idx, g, fn, *args):
    """``fn(*args, leaf=s)`` with ``s = leaf_sizes(C)[leaf_idx]`` (``leaf_index``); a
    ``lax.switch``, so only the chosen branch runs. The exact branch (leaf 1, strong
    decays) also gets ``g`` for its locally summed exponents (``level_factors``)."""
    sizes = leaf_sizes(g.shape[-2])
    branches = [lambda a, s=s: fn(*a, leaf=s, g=g if s == 1 else None) for s in sizes]
    return lax.switch(leaf_idx, branches, args)


# ----------------------------------------------------------------------------- solve
def unit_lower_inverse(A):
    """``(I + A)^-1`` for strictly lower-triangular ``A [..., C, C]``.

    Block forward substitution: each 16 x 16 diagonal block is inverted row by row
    (``X_i = e_i - A_i X``, rows before i already final), then block rows are filled in
    order, ``Tinv_a = X_aa (E_a - A_{a,<a} Tinv_{<a})``. Plain batched products; no LAPACK
    (on CPU ``lax.linalg.triangular_solve`` goes through scipy's OpenBLAS, whose thread
    pool can deadlock when XLA calls it from several threads at once).
    """
    *lead, C, _ = A.shape
    ns, s = C // SUB_CHUNK, SUB_CHUNK
    Ad = _diag_blocks(A, s)  # [..., ns, s, s]
    X = jnp.broadcast_to(jnp.eye(s, dtype=A.dtype), Ad.shape)
    for i in range(1, s):
        x_i = X[..., i, :] - einsum("...m,...mn->...n", Ad[..., i, :], X)
        X = X.at[..., i, :].set(x_i)
    rows = []  # block rows of the inverse, each [..., s, C]
    for a in range(ns):
        X_aa = X[..., a, :, :]
        lo, hi = a * s, (a + 1) * s
        diag_part = jnp.pad(X_aa, [(0, 0)] * len(lead) + [(0, 0), (lo, C - hi)])
        if a == 0:
            rows.append(diag_part)
            continue
        Tinv_prev = jnp.concatenate(rows, axis=-2)  # [..., lo, C]
        rhs = einsum("...ij,...jn->...in", A[..., lo:hi, :lo], Tinv_prev)
        rows.append(diag_part - einsum("...ij,...jn->...in", X_aa, rhs))
    return jnp.concatenate(rows, axis=-2)


# ----------------------------------------------------------------------------- per chunk
def chunk_decays(G, g, leaf_idx):
    """``exp(G)``, ``exp(G_last - G)`` (``[..., C, K]``) and ``exp(G_last)`` (``[..., K]``).

    With strong decays (the exact branch of ``leaf_index``) ``G_last - G`` is summed
    locally from ``g`` (see ``level_factors``)."""
    G_last = G[..., -1:, :]
    exact = leaf_idx == len(leaf_sizes(G.shape[-2])) - 1
    suffix = lax.cond(exact,
                      lambda: lax.cumsum(g, axis=g.ndim - 2, reverse=True) - g,
                      lambda: G_last - G)
    return jnp.exp(G), jnp.exp(suffix), jnp.exp(G_last[..., 0, :])


def _lower_ones(x):
    """The ``C x C`` lower triangle of ones (diagonal included), broadcast over the batch
    axes of ``x [..., C, K]``, so the cumulative sums below are batched products."""
    C = x.shape[-2]
    return jnp.broadcast_to(tri_mask(C, strict=False).astype(x.dtype), x.shape[:-1] + (C,))


def chunk_cumsum(g):
    """In-chunk cumulative sum over the C axis of ``[..., C, K]``, as a batched product
    with a triangle of ones (faster than ``jnp.cumsum``'s reduce-window on XLA:CPU)."""
    return einsum("...ij,...jk->...ik", _lower_ones(g), g)


def chunk_reverse_cumsum(dG):
    """Adjoint of ``chunk_cumsum``: ``dg_j = sum_{i >= j} dG_i`` within each chunk."""
    return einsum("...ij,...ik->...jk", _lower_ones(dG), dG)
