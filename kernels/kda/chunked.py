"""Chunkwise-parallel KDA in plain XLA (``implementation="xla"``), with its own backward.

The recurrence (see ``reference.py``) is sequential in T. The chunked form turns most of
the work into dense matrix products. Cut the sequence into chunks of ``C`` tokens
(default 64). Inside one chunk, with ``G = cumsum(g)`` restarted at every chunk (so
``exp(G_i)`` is the total decay from the chunk start up to and including token i):

* two ``C x C`` score matrices, one lower triangle each,

      Akk[i, j] = beta_i * sum_d k_id k_jd exp(G_id - G_jd)      (j <  i)
      Aqk[i, j] =          sum_d q_id k_jd exp(G_id - G_jd)      (j <= i)

* the delta rule inside a chunk is a unit lower-triangular system:
  ``Tinv = (I + Akk)^-1`` (kda.md's ``T``; block forward substitution),
  ``W = Tinv (beta exp(G) k)`` and ``U = Tinv (beta v)``;

* a short sequential scan over chunks carries the float32 state ``S`` (``K x V``):

      Vn = U - W S                          # values minus what S already predicts
      S' = exp(G_last)[:, None] S + (exp(G_last - G) k)^T Vn

  and, once every chunk's start state ``S`` and ``Vn`` are known, all chunks at once:

      O  = (exp(G) q) S + Aqk Vn            # inter-chunk part + intra-chunk part

Only the state update is a scan, over ``T / C`` chunks instead of ``T`` tokens; the score
matrices, the inverses and the outputs are batched over all chunks.

Files, by phase:

* ``chunked_decay.py``: the decayed score matrices, stable for any decay (sub-chunk
  factorisation through reference rows, and the data-dependent fast path), their
  cotangents, the triangular inverse and the per-chunk decay factors;
* ``chunked_fwd.py``: chunk-major layout, per-chunk matrices, the state scan;
* ``chunked_bwd.py``: the hand-written backward (reverse scan, then everything else
  batched over chunks);
* this file: the ``custom_vjp`` tying them together, padding and segments.

Memory. On CPU every call gets a fresh temp buffer from XLA, and first touching its
pages costs about as much as the arithmetic, so the peak of live memory sets the
speed as much as the products do. Hence:

* long sequences run in segments of whole chunks, one after the other, carrying the
  state (``num_segments``: about ``SEGMENT_BYTES`` per q-sized tensor of a segment), so
  one segment's temporaries are reused by the next;
* the residuals are the caller's q, k, v, g, beta themselves plus ``Tinv``, the score
  matrices, ``W``, the chunk start states and ``Vn``; the chunk-major copies, ``G`` and
  the decay factors are recomputed in the backward, after the forward
  (``chunked_fwd.after``), so that XLA neither merges them with the forward's copies nor
  computes them early;
* the partial gradients are completed inside the ``lax.switch`` over leaf sizes, so
  their pieces are freed there instead of being fused into the final sums;
* the layout is chunk-major ``[N, B H, C, D]``: batch and heads share one axis (a
  size-1 batch axis between the others made XLA:CPU copy every product's output).

At T=4K, 4 heads of 128, these took forward+backward from about 150 ms to about
120 ms on a 2-core CPU (``kernels.bench_kda.kda_run``), and the temp pages touched per
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

from kernels.kda.chunked_bwd import core_bwd
from kernels.kda.chunked_fwd import after, core_fwd


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _chunked_core(C, scale, q, k, v, g, beta, S0):
    """``[B, T, H, *]`` float32 inputs (T a multiple of the chunk size C, g the per-token
    log-decays, q not yet scaled) -> ``(O [B, T, H, V], S_T [B, H, K, V])``. Inside,
    everything is chunk-major ``[N, B H, C, *]``, so the scans over chunks need no
    transposes."""
    return core_fwd(C, scale, q, k, v, g, beta, S0)[0]


_chunked_core.defvjp(core_fwd, core_bwd)


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


def pad_to_chunks(T: int, chunk_size: int) -> int:
    """Tokens to append so that ``T`` becomes a multiple of ``chunk_size``."""
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
    # Segment i waits for segment i-1's state (``after``): XLA then runs them one after the
    # other and reuses one segment's temporaries for the next.
    parts = [jnp.split(x, n, axis=1) for x in xs]
    scale = float(scale)
    S, Os = S0, []
    for i in range(n):
        seg = [p[i] for p in parts]
        if i:
            wait = after(S)
            seg = [x + wait for x in seg]
        O_i, S = _chunked_core(C, scale, *seg, S)
        Os.append(O_i)
    O = jnp.concatenate(Os, axis=1)
    return O[:, :T], S
