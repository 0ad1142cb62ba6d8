"""Chunkwise-parallel KDA in plain XLA (``implementation="xla"``).

The recurrence (see ``reference.py``) is sequential in T. The chunked form turns most of
the work into dense matrix products. Cut the sequence into chunks of ``C`` tokens
(default 64). Inside one chunk, with ``G = cumsum(g)`` restarted at every chunk (so
``exp(G_i)`` is the total decay from the chunk start up to and including token i):

* two ``C x C`` score matrices, one lower triangle each,

      Akk[i, j] = beta_i * sum_d k_id k_jd exp(G_id - G_jd)      (j <  i)
      Aqk[i, j] =          sum_d q_id k_jd exp(G_id - G_jd)      (j <= i)

* the delta rule inside a chunk is a unit lower-triangular system: with
  ``T = (I + Akk)^-1``, ``W = T (beta exp(G) k)`` and ``U = T (beta v)`` (computed here
  by forward substitution on the right-hand sides ``[beta exp(G) k | beta v]``; the
  Pallas kernels form T itself);

* a short sequential scan over chunks carries the float32 state ``S`` (``K x V``):

      Vn = U - W S                          # values minus what S already predicts
      O  = (exp(G) q) S + Aqk Vn            # inter-chunk part + intra-chunk part
      S  = exp(G_last)[:, None] S + (exp(G_last - G) k)^T Vn

All chunks' score matrices and triangular solves run in parallel; only the last step is
a scan, over ``T / C`` chunks instead of ``T`` tokens.

Stability trick. ``exp(G_i - G_j)`` for ``j <= i`` is at most 1, but ``exp(G_i)`` and
``exp(-G_j)`` separately are not: with strong decay (g ~ -10 per step) ``-G_j`` reaches
hundreds inside a chunk and ``exp(-G_j)`` overflows float32. So we never factor the
whole chunk through its start. The chunk is cut into sub-chunks of 16 rows. For a block
of rows ``a`` and an earlier block of columns ``b < a`` we pick a reference row ``r``,
the first row of block ``a``; every column token ``j`` of block ``b`` comes before
``r`` and every row token ``i`` of block ``a`` is at or after it, so

      exp(G_i - G_j) = exp(G_i - G_r) * exp(G_r - G_j)      with both exponents <= 0,

and the block becomes one matrix product of two well-scaled factors. Diagonal blocks
(``a == b``) have no such row; they are computed pairwise, ``exp(G_i - G_j)`` for every
``(i, j, d)`` of the 16 x 16 block, masked to ``j <= i`` before exponentiating.

Padding. ``T`` that is not a multiple of ``C`` is padded at the end with ``g = 0``,
``beta = 0`` and ``q = k = v = 0``. Such a token leaves the state untouched (decay
``exp(0) = 1``, zero write strength, zero key) and its zero key contributes nothing to
any score, so real outputs and the final state are unchanged; padded outputs are sliced
off. Gradients come from JAX autodiff through this function; on accelerators the
intra-chunk part is rematerialised (``jax.checkpoint``) so the pairwise diagonal-block
tensors are not kept for the backward pass (see the note in ``kda_chunked``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

SUB_CHUNK = 16
_HIGHEST = lax.Precision.HIGHEST


def _einsum(spec, *operands):
  return jnp.einsum(spec, *operands, precision=_HIGHEST)


def decayed_scores(x, y, G, *, inclusive: bool):
  """``A[i, j] = sum_d x_id y_jd exp(G_id - G_jd)`` on the lower triangle of each chunk.

  ``x, y, G``: ``[..., C, K]`` (G the within-chunk cumulative log-decay, non-increasing
  along C). Returns ``[..., C, C]``, zero above the diagonal (and on it unless
  ``inclusive``). Never forms ``exp(+G)``; see the module docstring.
  """
  *lead, C, K = x.shape
  ns, s = C // SUB_CHUNK, SUB_CHUNK
  xs = x.reshape(*lead, ns, s, K)
  ys = y.reshape(*lead, ns, s, K)
  Gs = G.reshape(*lead, ns, s, K)
  G_ref = Gs[..., :, :1, :]  # first row of every row block: [..., ns, 1, K]

  # Off-diagonal blocks (column block b strictly before row block a).
  x_left = xs * jnp.exp(Gs - G_ref)  # exponent <= 0
  blk = jnp.arange(ns)
  below = (blk[None, :] < blk[:, None])[:, :, None, None]  # [a, b, 1, 1]
  expo = G_ref[..., :, None, :, :] - Gs[..., None, :, :, :]  # [..., a, b, s, K]
  y_right = jnp.where(below, ys[..., None, :, :, :] * jnp.exp(jnp.where(below, expo, 0.0)), 0.0)
  off = _einsum("...aik,...abjk->...aibj", x_left, y_right)  # [..., a, s, b, s]

  # Diagonal blocks, pairwise and masked before the exponential.
  i = jnp.arange(s)
  tri = (i[None, :] <= i[:, None]) if inclusive else (i[None, :] < i[:, None])  # [i, j]
  pair = Gs[..., :, :, None, :] - Gs[..., :, None, :, :]  # [..., a, i, j, K]
  decay = jnp.exp(jnp.where(tri[..., None], pair, 0.0))
  diag = jnp.sum(xs[..., :, :, None, :] * ys[..., :, None, :, :] * decay, axis=-1)
  diag = jnp.where(tri, diag, 0.0)  # [..., a, i, j]

  eye_blk = jnp.eye(ns, dtype=bool)[:, None, :, None]  # [a, 1, b, 1]
  full = jnp.where(eye_blk, diag[..., :, :, None, :], off)  # diag broadcast over b
  return full.reshape(*lead, C, C)


def unit_lower_solve(a, rhs):
  """Solves ``(I + a) x = rhs`` for strictly lower-triangular ``a [..., C, C]``.

  Forward substitution as a loop of row updates (``x_i = rhs_i - a_i x``; entries
  of ``a`` on and above the diagonal are zero, so rows not yet solved do not
  contribute). Written with plain ops rather than ``lax.linalg.triangular_solve``:
  on CPU that lowers to LAPACK through scipy's OpenBLAS, whose thread pool can
  deadlock when XLA calls it from several threads at once (seen in training).
  """
  C = a.shape[-1]

  def row(i, x):
    a_i = lax.dynamic_index_in_dim(a, i, axis=-2, keepdims=True)        # [..., 1, C]
    r_i = lax.dynamic_index_in_dim(rhs, i, axis=-2, keepdims=True)      # [..., 1, N]
    x_i = r_i - jnp.einsum("...ij,...jn->...in", a_i, x, precision=lax.Precision.HIGHEST)
    return lax.dynamic_update_index_in_dim(x, x_i, i, axis=-2)

  return lax.fori_loop(0, C, row, rhs)


def _intra_chunk(q, k, v, G, beta):
  """Per-chunk matrices. Inputs ``[..., C, *]`` float32, beta ``[..., C]``."""
  akk = beta[..., :, None] * decayed_scores(k, k, G, inclusive=False)
  aqk = decayed_scores(q, k, G, inclusive=True)
  rhs = jnp.concatenate([beta[..., None] * jnp.exp(G) * k, beta[..., None] * v], axis=-1)
  # (I + Akk) [W | U] = rhs; unit lower triangular -> forward substitution.
  wu = unit_lower_solve(akk, rhs)
  K = k.shape[-1]
  return wu[..., :K], wu[..., K:], aqk


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
  N = (T + pad) // C

  def to_chunks(x):  # [B, T, H, D] -> [B, H, N, C, D] float32, zero-padded in T
    x = x.astype(f32)
    if pad:
      x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
    x = jnp.moveaxis(x, 2, 1)
    return x.reshape(x.shape[:2] + (N, C) + x.shape[3:])

  q = to_chunks(q_BTHK) * scale
  k = to_chunks(k_BTHK)
  v = to_chunks(v_BTHV)
  g = to_chunks(g_BTHK)
  beta = to_chunks(beta_BTH)  # [B, H, N, C]
  G = jnp.cumsum(g, axis=-2)  # restarts every chunk

  # Rematerialise the intra-chunk part in the backward pass (its pairwise tensors are
  # 16x the size of k). Not on CPU: with jax 0.10.2 the rematerialised gradient hung
  # at run time on XLA:CPU for K >= 64 (compiled fine, never finished); CPU runs are
  # small anyway.
  intra = _intra_chunk if jax.default_backend() == "cpu" else jax.checkpoint(_intra_chunk)
  W, U, Aqk = intra(q, k, v, G, beta)
  G_last = G[..., -1, :]  # [B, H, N, K]
  Qg = q * jnp.exp(G)
  Kg = k * jnp.exp(G_last[..., None, :] - G)
  decay = jnp.exp(G_last)

  S0 = (jnp.zeros((B, H, K, V), f32) if initial_state_BHKV is None
        else initial_state_BHKV.astype(f32))

  def step(S, xs):
    Qg_c, Kg_c, W_c, U_c, Aqk_c, decay_c = xs
    Vn = U_c - _einsum("bhck,bhkv->bhcv", W_c, S)
    O = _einsum("bhck,bhkv->bhcv", Qg_c, S) + _einsum("bhij,bhjv->bhiv", Aqk_c, Vn)
    S = decay_c[..., :, None] * S + _einsum("bhck,bhcv->bhkv", Kg_c, Vn)
    return S, O

  chunk_major = lambda x: jnp.moveaxis(x, 2, 0)
  S, O = lax.scan(step, S0, tuple(map(chunk_major, (Qg, Kg, W, U, Aqk, decay))))
  O = jnp.moveaxis(O, 0, 2).reshape(B, H, N * C, V)[:, :, :T]
  return jnp.moveaxis(O, 1, 2), S
