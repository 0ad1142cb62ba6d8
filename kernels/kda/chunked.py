"""Chunkwise-parallel KDA in plain XLA (``implementation="xla"``), with its own backward.

The recurrence (see ``reference.py``) is sequential in T. The chunked form turns most of
the work into dense matrix products. Cut the sequence into chunks of ``C`` tokens
(default 64). Inside one chunk, with ``G = cumsum(g)`` restarted at every chunk (so
``exp(G_i)`` is the total decay from the chunk start up to and including token i):

* two ``C x C`` score matrices, one lower triangle each,

      Akk[i, j] = beta_i * sum_d k_id k_jd exp(G_id - G_jd)      (j <  i)
      Aqk[i, j] =          sum_d q_id k_jd exp(G_id - G_jd)      (j <= i)

* the delta rule inside a chunk is a unit lower-triangular system:
  ``T = (I + Akk)^-1`` (block forward substitution, see ``unit_lower_inverse``),
  ``W = T (beta exp(G) k)`` and ``U = T (beta v)``;

* a short sequential scan over chunks carries the float32 state ``S`` (``K x V``):

      Vn = U - W S                          # values minus what S already predicts
      S' = exp(G_last)[:, None] S + (exp(G_last - G) k)^T Vn

  and, once every chunk's start state ``S`` and ``Vn`` are known, all chunks at once:

      O  = (exp(G) q) S + Aqk Vn            # inter-chunk part + intra-chunk part

Only the state update is a scan, over ``T / C`` chunks instead of ``T`` tokens; the score
matrices, the inverses and the outputs are batched over all chunks.

Stability. ``exp(G_i - G_j)`` for ``j <= i`` is at most 1, but ``exp(G_i)`` and
``exp(-G_j)`` separately are not: with strong decay (g ~ -10 per step) ``-G_j`` reaches
hundreds inside a chunk and ``exp(-G_j)`` overflows float32. The decayed products are
therefore built from blocks that are each factored through a *reference row* ``r``:

      exp(G_i - G_j) = exp(G_i - G_r) * exp(G_r - G_j).

kda.md's scheme (what the Pallas kernels do) uses sub-chunks of 16: a block of rows
``a`` and an earlier block of columns go through the first row of ``a`` (both exponents
``<= 0``), and the 16 x 16 diagonal blocks are computed pairwise. Here the same
factorisation is applied recursively, because the pairwise ``[16, 16, K]`` tensors cost
far more than matrix products on CPU. Level by level (``b = C/2, C/4, ..., 1``), the
lower-left ``b x b`` quadrant of every ``2b`` diagonal block is one product through the
first row of its lower half; both exponents are again ``<= 0`` (``level_factors``), and
what is left at the bottom is the diagonal itself, ``exp(0) = 1``. This is exact for any
decay: nothing is formed with a positive exponent.

Fast path. The recursion stops early at a *leaf* block size ``s`` (the whole chunk, else
16) when every leaf block's log-decay span ``G_first - G_last`` is at most
``LEAF_SPAN_MAX = 40`` in every channel. Such a leaf is one product through its first
row, whose factors lie in ``[exp(-40), exp(40)]``: no overflow, no underflow, and the
same rounding as the exact form (each output entry is a uniformly rescaled sum of the
same terms). ``leaf_index`` picks the largest safe leaf from the data; ``lax.switch``
runs only that branch; strong decays fall back to the exact recursion (leaf 1). Mild
decays, as in training, take the fast path; the tests cover every branch.

Backward. ``jax.grad`` of this path does not differentiate through the forward ops:
``_chunked_core`` is a ``custom_vjp`` with the hand-derived backward of kda.md (the same
math as the Pallas kernels, batched over chunks): a reverse scan over chunks for the
state gradient ``dS`` (which also takes the products with ``dS``, so the per-chunk
``dS`` is never stored), then, in parallel over chunks, ``dA = -T^T dT T^T`` on the
strict lower triangle and the gradients of the decayed score matrices, which are again
decayed products evaluated over the same blocks and factors. ``dg`` is the reverse
cumulative sum of ``dG`` within each chunk.

Memory. On CPU every call gets a fresh temp buffer from XLA, and first touching its
pages costs about as much as the arithmetic, so the peak of live memory sets the
speed as much as the products do. Hence:

* long sequences run in segments of whole chunks, one after the other, carrying the
  state (``num_segments``: about ``SEGMENT_BYTES`` per q-sized tensor of a segment), so
  one segment's temporaries are reused by the next;
* the residuals are the caller's q, k, v, g, beta themselves plus ``T``, the score
  matrices, ``W``, the chunk start states and ``Vn``; the chunk-major copies, ``G`` and
  the decay factors are recomputed in the backward, after the forward (``_after``), so
  that XLA neither merges them with the forward's copies nor computes them early;
* the partial gradients are completed inside the ``lax.switch`` over leaf sizes, so
  their pieces are freed there instead of being fused into the final sums;
* the layout is chunk-major ``[N, B H, C, D]``: batch and heads share one axis (a
  size-1 batch axis between the others made XLA:CPU copy every product's output).

At T=4K, 4 heads of 128, these took forward+backward from about 150 ms to about
120 ms on a 2-core CPU (``kernels/kda/benchmark.py``), and the temp pages touched per
call from 213 to 99 MB.

Padding. ``T`` that is not a multiple of ``C`` is padded at the end with ``g = 0``,
``beta = 0`` and ``q = k = v = 0``. Such a token leaves the state untouched (decay
``exp(0) = 1``, zero write strength, zero key) and its zero key contributes nothing to
any score, so real outputs and the final state are unchanged; padded outputs are sliced
off.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax import lax

SUB_CHUNK = 16
_HIGHEST = lax.Precision.HIGHEST


def _einsum(spec, *operands):
    return jnp.einsum(spec, *operands, precision=_HIGHEST)


def _tri_mask(n, strict):
    i = jnp.arange(n)
    return (i[None, :] < i[:, None]) if strict else (i[None, :] <= i[:, None])


def _tril(x, *, strict: bool):
    return jnp.where(_tri_mask(x.shape[-1], strict), x, 0.0)


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
        return _einsum("...ijd,d->...ij", a[..., :, None, :] * b[..., None, :, :], ones)
    return _einsum("...qid,...qjd->...qij", a, b)


def decayed_scores(x, y, G, *, inclusive: bool, leaf: int = 1):
    """``A[i, j] = sum_d x_id y_jd exp(G_id - G_jd)`` on the lower triangle of each chunk.

    ``x, y, G``: ``[..., C, K]`` (G non-increasing along C, C a power of two). Returns
    ``[..., C, C]``, zero above the diagonal (and on it unless ``inclusive``). With the
    default ``leaf=1`` it never forms a positive exponent: see ``_scores``.
    """
    return _scores((x,), y, G, strict=(not inclusive,), leaf=leaf)[0]


def _scores(xs, y, G, *, strict, leaf, g=None):
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
               else _einsum("...cd,...cd->...c", x, y)[..., None, None] for x, st in zip(xs, strict)]
    else:
        L, R = leaf_factors(G, leaf)
        yR = _blocks(y, leaf) * R
        out = [jnp.where(_tri_mask(leaf, st), _block_scores(_blocks(x, leaf) * L, yR), 0.0)
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


def _decayed_row_col(Ms, xs, y, G, *, leaf, g=None):
    """Cotangents of decayed score matrices.

    For lower-triangular ``Ms`` (tuple of ``[..., C, C]``, one per score matrix, all with
    column operand ``y``) and their row operands ``xs`` returns

    * ``rows``: per matrix ``row_i = sum_j M_ij y_j exp(G_i - G_j)``,
    * ``col``: ``sum_n sum_i M^n_ij x^n_i exp(G_i - G_j)`` (summed over the matrices, as
      their gradients add up),
    * ``dG``: the matrices' gradient w.r.t. G, ``sum_n x^n row^n - y col``,

    all ``[..., C, K]``, over the same blocks as ``_scores``: the leaf blocks, then every
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
            rows.append([(L * _einsum("...qij,...qjd->...qid", Mb, yR)).reshape(y.shape)])
            c = c + _einsum("...qij,...qid->...qjd", Mb, _blocks(x, leaf) * L)
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
                r = _einsum("...qij,...qjd->...qid", MQ, yR)
                c = c + _einsum("...qij,...qid->...qjd", MQ, xL)
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


def _switch_leaf(leaf_idx, g, fn, *args):
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
    order, ``T_a = X_aa (E_a - A_{a,<a} T_{<a})``. Plain batched products; no LAPACK
    (on CPU ``lax.linalg.triangular_solve`` goes through scipy's OpenBLAS, whose thread
    pool can deadlock when XLA calls it from several threads at once).
    """
    *lead, C, _ = A.shape
    ns, s = C // SUB_CHUNK, SUB_CHUNK
    Ad = _diag_blocks(A, s)  # [..., ns, s, s]
    X = jnp.broadcast_to(jnp.eye(s, dtype=A.dtype), Ad.shape)
    for i in range(1, s):
        x_i = X[..., i, :] - _einsum("...m,...mn->...n", Ad[..., i, :], X)
        X = X.at[..., i, :].set(x_i)
    rows = []  # block rows of T, each [..., s, C]
    for a in range(ns):
        X_aa = X[..., a, :, :]
        lo, hi = a * s, (a + 1) * s
        diag_part = jnp.pad(X_aa, [(0, 0)] * len(lead) + [(0, 0), (lo, C - hi)])
        if a == 0:
            rows.append(diag_part)
            continue
        T_prev = jnp.concatenate(rows, axis=-2)  # [..., lo, C]
        rhs = _einsum("...ij,...jn->...in", A[..., lo:hi, :lo], T_prev)
        rows.append(diag_part - _einsum("...ij,...jn->...in", X_aa, rhs))
    return jnp.concatenate(rows, axis=-2)


# ----------------------------------------------------------------------------- core
def _intra_forward(q, k, v, G, g, beta, leaf_idx):
    """Per-chunk matrices; inputs ``[..., C, *]`` float32 (q already scaled), beta
    ``[..., C]``. Returns ``Akk_raw`` (strict, without beta), ``Aqk``, ``T``, ``W``, ``U``."""
    akk_raw, aqk = _switch_leaf(leaf_idx, g, functools.partial(_scores, strict=(True, False)),
                                (k, q), k, G)
    T = unit_lower_inverse(beta[..., :, None] * akk_raw)
    b = beta[..., None]
    W = _einsum("...ij,...jd->...id", T, b * jnp.exp(G) * k)
    U = _einsum("...ij,...jd->...id", T, b * v)
    return akk_raw, aqk, T, W, U


def _state_forward(W, U, Kg, decay, S0):
    """Scan over chunks; returns the final state and, per chunk, its start state and Vn."""

    def step(S, xs):
        W_c, U_c, Kg_c, decay_c = xs
        Vn = U_c - _einsum("zck,zkv->zcv", W_c, S)
        S_next = decay_c[..., :, None] * S + _einsum("zck,zcv->zkv", Kg_c, Vn)
        return S_next, (S, Vn)

    S_T, (h, Vn) = lax.scan(step, S0, (W, U, Kg, decay))
    return S_T, h, Vn


def _decays(G, g, leaf_idx):
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
    return jnp.broadcast_to(_tri_mask(C, strict=False).astype(x.dtype), x.shape[:-1] + (C,))


def _chunk_cumsum(g):
    """In-chunk cumulative sum over the C axis of ``[..., C, K]``, as a batched product
    with a triangle of ones (faster than ``jnp.cumsum``'s reduce-window on XLA:CPU)."""
    return _einsum("...ij,...jk->...ik", _lower_ones(g), g)


def _chunk_reverse_cumsum(dG):
    """Adjoint of ``_chunk_cumsum``: ``dg_j = sum_{i >= j} dG_i`` within each chunk."""
    return _einsum("...ij,...ik->...jk", _lower_ones(dG), dG)


def _to_chunk_major(x, C):
    """``[B, T, H, (D)] -> [N, B H, C, (D)]`` (T a multiple of C). Batch and heads are
    one axis: a size-1 batch axis between the others made XLA:CPU copy every product's
    output into its layout."""
    B, T, H = x.shape[:3]
    x = jnp.moveaxis(x.reshape((B, T // C, C) + x.shape[2:]), (1, 2), (0, 3))
    return x.reshape((T // C, B * H, C) + x.shape[4:])


def _from_chunk_major(x, B):
    """Inverse of ``_to_chunk_major`` (``B``: the batch size)."""
    N, BH, C = x.shape[:3]
    x = x.reshape((N, B, BH // B, C) + x.shape[3:])
    return jnp.moveaxis(x, (0, 3), (1, 2)).reshape((B, N * C, BH // B) + x.shape[4:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _chunked_core(C, scale, q, k, v, g, beta, S0):
    """``[B, T, H, *]`` float32 inputs (T a multiple of the chunk size C, g the per-token
    log-decays, q not yet scaled) -> ``(O [B, T, H, V], S_T [B, H, K, V])``. Inside,
    everything is chunk-major ``[N, B H, C, *]``, so the scans over chunks need no
    transposes."""
    return _core_fwd(C, scale, q, k, v, g, beta, S0)[0]


# Long sequences are processed in segments of whole chunks, one after the other, the
# state carried from one to the next (exactly what ``initial_state`` does across calls):
# about SEGMENT_BYTES per q-sized float32 tensor of a segment, at most MAX_SEGMENTS
# (each segment is its own copy of the program: compile time grows with their number).
SEGMENT_BYTES = 1 << 20
MAX_SEGMENTS = 8


def num_segments(N, nbytes):
    """Segments for ``N`` chunks whose q-sized float32 tensor takes ``nbytes``: the
    largest divisor of N that is at most ``min(MAX_SEGMENTS, ceil(nbytes /
    SEGMENT_BYTES))``."""
    want = max(1, min(MAX_SEGMENTS, -(-nbytes // SEGMENT_BYTES)))
    return max(d for d in range(1, want + 1) if N % d == 0)


def _after(x):
    """A float32 zero that XLA cannot compute before ``x`` (a scalar element of x enters
    it), and that stays zero if that element is inf or NaN. Adding it to an array makes
    the work on that array wait for ``x``: it orders the segments and keeps the backward's
    recomputations apart from the forward's."""
    e = x[(0,) * x.ndim]
    return (e != e).astype(jnp.float32) * 0.0


def _chunk_inputs(C, scale, q, k, v, g, beta):
    """Caller's ``[B, T, H, *]`` arrays -> chunk-major ``q`` (scaled), ``k``, ``v``, ``g``,
    ``beta`` and ``G = cumsum(g)`` within each chunk. The forward computes them, and the
    backward computes them again rather than keeping them (module docstring, Memory)."""
    q, k, v, g, beta = (_to_chunk_major(x, C) for x in (q, k, v, g, beta))
    return q * scale, k, v, g, beta, _chunk_cumsum(g)


def _core_fwd(C, scale, q_in, k_in, v_in, g_in, beta_in, S0):
    q, k, v, g, beta, G = _chunk_inputs(C, scale, q_in, k_in, v_in, g_in, beta_in)
    leaf_idx = leaf_index(G)
    akk_raw, aqk, T, W, U = _intra_forward(q, k, v, G, g, beta, leaf_idx)
    eG, kdec, decay = _decays(G, g, leaf_idx)
    B = q_in.shape[0]
    S_T, h, Vn = _state_forward(W, U, k * kdec, decay, S0.reshape((-1,) + S0.shape[2:]))
    O = _einsum("...ck,...kv->...cv", q * eG, h) + _einsum("...ij,...jv->...iv", aqk, Vn)
    return ((_from_chunk_major(O, B), S_T.reshape(S0.shape)),
            (q_in, k_in, v_in, g_in, beta_in, leaf_idx, akk_raw, aqk, T, W, h, Vn))


def _bwd_parallel(q, k, v, G, g, beta, leaf_idx, eG, kdec, decay, akk_raw, aqk, T, h, Vn,
                  dO, dkg, ddecay, dVn):
    """Everything of the backward after the reverse state scan, batched over chunks:
    gradients through the state pass's inputs, then through ``T`` and the scores."""
    Qg, Kg = q * eG, k * kdec
    daqk = _tril(_einsum("...iv,...jv->...ij", dO, Vn), strict=False)
    dqg = _einsum("...cv,...kv->...ck", dO, h)
    dW = -_einsum("...cv,...kv->...ck", dVn, h)
    dU = dVn
    dq = eG * dqg
    dk = kdec * dkg
    dG = Qg * dqg - Kg * dkg
    last = _einsum("...ck,...ck->...k", Kg, dkg) + ddecay * decay  # through G_last
    dG = dG.at[..., -1, :].add(last)

    # Intra-chunk: W = T (beta e^G k), U = T (beta v), T = (I + beta Akk_raw)^-1.
    b = beta[..., None]
    bk, bv = b * eG * k, b * v
    dT = _tril(_einsum("...iv,...jv->...ij", dU, bv) + _einsum("...id,...jd->...ij", dW, bk),
               strict=False)
    d_bv = _einsum("...ji,...jv->...iv", T, dU)
    d_bk = _einsum("...ji,...jd->...id", T, dW)
    dA = _tril(-_einsum("...ji,...jk->...ik", T, _einsum("...ij,...kj->...ik", dT, T)), strict=True)
    dbeta = (_einsum("...cv,...cv->...c", v, d_bv) + _einsum("...ck,...ck->...c", eG * k, d_bk)
             + _einsum("...ij,...ij->...i", dA, akk_raw))
    dv = b * d_bv
    dk = dk + b * eG * d_bk
    dG = dG + bk * d_bk
    # Decayed scores: Akk_raw (rows and columns k, cotangent beta dA), Aqk (rows q,
    # columns k, cotangent dAqk).
    # The partial gradients go into the branch and are completed there: they are then
    # materialised before it, and what they were made of is freed early (XLA would
    # otherwise fuse their element-wise pieces into the final sums and keep every piece
    # alive until the end).
    dq, dk, dG = _switch_leaf(leaf_idx, g, _add_decayed_row_col, (b * dA, daqk), (k, q), k, G,
                              (dq, dk, dG))
    return dq, dk, dv, dG, dbeta


def _add_decayed_row_col(Ms, xs, y, G, acc, *, leaf, g=None):
    """``acc = (dq, dk, dG)`` plus the cotangents of the score matrices ``Ms = (Akk
    cotangent, Aqk cotangent)`` with ``xs = (k, q)`` and ``y = k`` (``_decayed_row_col``)."""
    (kk_row, qk_row), col, dG_scores = _decayed_row_col(Ms, xs, y, G, leaf=leaf, g=g)
    dq, dk, dG = acc
    return dq + qk_row, dk + kk_row + col, dG + dG_scores


def _core_bwd(C, scale, res, cts):
    q_in, k_in, v_in, g_in, beta_in, leaf_idx, akk_raw, aqk, T, W, h, Vn = res
    dO, dS_T = cts
    # Recompute the chunk-major copies, G and the decays from the caller's arrays, after
    # the forward (``_after``): merged with the forward's, they would be kept alive from
    # the start of the forward to the end of the backward.
    wait = _after(Vn) + _after(dS_T)
    q, k, v, g, beta, G = _chunk_inputs(
        C, scale, *(x + wait for x in (q_in, k_in, v_in, g_in, beta_in)))
    dO = _to_chunk_major(dO, C)
    eG, kdec, decay = _decays(G, g, leaf_idx)
    # State pass, reverse over chunks. dS is the gradient of the state at a chunk's end:
    #   dVn = Aqk^T dO + Kg dS,   dS_start = decay dS + Qg^T dO - W^T dVn.
    # The products with dS itself (dKg = Vn dS^T, ddecay = sum_v h dS) are taken inside
    # the scan, so the per-chunk dS ([N, B H, K, V], the largest tensor here) is never
    # stored.
    def step(dS, xs):
        aqk_c, q_c, eG_c, dO_c, k_c, kdec_c, W_c, decay_c, Vn_c, h_c = xs
        dVn = (_einsum("zji,zjv->ziv", aqk_c, dO_c)
               + _einsum("zck,zkv->zcv", k_c * kdec_c, dS))
        dkg = _einsum("zcv,zkv->zck", Vn_c, dS)
        ddecay = _einsum("zkv,zkv->zk", h_c, dS)
        dS_start = (decay_c[..., :, None] * dS + _einsum("zck,zcv->zkv", q_c * eG_c, dO_c)
                    - _einsum("zck,zcv->zkv", W_c, dVn))
        return dS_start, (dVn, dkg, ddecay)

    B = q_in.shape[0]
    dS0, (dVn, dkg, ddecay) = lax.scan(
        step, dS_T.reshape((-1,) + dS_T.shape[2:]),
        (aqk, q, eG, dO, k, kdec, W, decay, Vn, h), reverse=True)
    dq, dk, dv, dG, dbeta = _bwd_parallel(q, k, v, G, g, beta, leaf_idx, eG, kdec, decay,
                                          akk_raw, aqk, T, h, Vn, dO, dkg, ddecay, dVn)
    grads = (dq * scale, dk, dv, _chunk_reverse_cumsum(dG), dbeta)
    return tuple(_from_chunk_major(x, B) for x in grads) + (dS0.reshape(dS_T.shape),)


_chunked_core.defvjp(_core_fwd, _core_bwd)


def pad_to_chunks(T: int, chunk_size: int) -> int:
    return -(-T // chunk_size) * chunk_size - T


def kda_chunked(q_BTHK, k_BTHK, v_BTHV, g_BTHK, beta_BTH, *, scale, initial_state_BHKV=None,
                chunk_size: int = 64):
    """Chunkwise-parallel KDA; returns ``(o_BTHV float32, state_BHKV float32)``."""
    f32 = jnp.float32
    B, T, H, K = q_BTHK.shape
    V = v_BTHV.shape[-1]
    C = chunk_size
    pad = pad_to_chunks(T, C)

    def prepare(x):  # float32, zero-padded in T to a multiple of C
        x = x.astype(f32)
        if pad:
            x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return x

    S0 = (jnp.zeros((B, H, K, V), f32) if initial_state_BHKV is None
          else initial_state_BHKV.astype(f32))
    xs = [prepare(x) for x in (q_BTHK, k_BTHK, v_BTHV, g_BTHK, beta_BTH)]
    N = xs[0].shape[1] // C
    n = num_segments(N, math.prod(xs[0].shape) * 4)
    # Segment i waits for segment i-1's state (_after): XLA then runs them one after the
    # other and reuses one segment's temporaries for the next.
    parts = [jnp.split(x, n, axis=1) for x in xs]
    scale = float(scale)
    S, Os = S0, []
    for i in range(n):
        seg = [p[i] for p in parts]
        if i:
            wait = _after(S)
            seg = [x + wait for x in seg]
        O_i, S = _chunked_core(C, scale, *seg, S)
        Os.append(O_i)
    O = jnp.concatenate(Os, axis=1)
    return O[:, :T], S
