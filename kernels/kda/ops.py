"""Kimi Delta Attention (KDA): the public op ``kda`` and its table of implementations.

KDA is a gated delta-rule linear attention (Kimi Linear, arXiv 2510.26692; exact math in
``shared/design/kda.md``). Per batch row and head a ``K x V`` float32 state is decayed
per key channel and corrected towards each new (key, value) pair:

    S_t = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T
    o_t = S_t^T (scale * q_t)

Implementations (same inputs, same outputs, all differentiable):

* ``"reference"``: token recurrence with ``lax.scan`` (``reference.py``); ground truth.
* ``"xla"``: chunkwise-parallel algorithm in plain jnp (``chunked.py``, split by phase
  into ``chunked_decay.py``, ``chunked_fwd.py``, ``chunked_bwd.py``); the docstrings
  there explain the chunk algorithm and how decays stay finite.
* ``"pallas"``: Pallas kernels with a hand-written backward (``pallas.py``; kernels in
  ``pallas_common.py``, ``pallas_state.py``, Mosaic ``pallas_tpu.py``, Triton
  ``pallas_gpu.py``), tiled by ``BlockSizes``; interpret mode by the shared rule of
  ``kernels/interpret.py`` (on CPU they run interpreted).

``IMPLEMENTATIONS`` names them; ``_PATHS`` maps each name to its function. The cost model
of the chunked forward is in ``cost.py``.

Layout: ``q, k: [B, T, H, K]``, ``v: [B, T, H, V]``, ``g: [B, T, H, K]`` (natural-log
decay per key channel, ``<= 0``), ``beta: [B, T, H]`` in ``[0, 1]``, state
``[B, H, K, V]`` float32. q and k must already be L2-normalised by the caller (the
layer does it); this op does not normalise them.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from kernels import interpret as interpret_rule
from kernels.kda import pallas
from kernels.kda.chunked import kda_chunked
from kernels.kda.pallas import BlockSizes
from kernels.kda.reference import kda_reference

__all__ = ["BlockSizes", "IMPLEMENTATIONS", "kda", "kda_chunked", "kda_reference",
           "l2_normalize"]

_FLOAT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))
L2_EPS = 1e-6


def l2_normalize(x):
    """kda.md's L2Norm, ``x / sqrt(sum x^2 + 1e-6)`` over the last axis, computed in
    float32 and returned in x's dtype: what q and k must go through before ``kda``."""
    x32 = x.astype(jnp.float32)
    inv_norm = jax.lax.rsqrt(jnp.sum(x32 * x32, axis=-1, keepdims=True) + L2_EPS)
    return (x32 * inv_norm).astype(x.dtype)


def _run_reference(q, k, v, g, beta, *, scale, initial_state, chunk_size, interpret,
                   block_sizes):
    return kda_reference(q, k, v, g, beta, scale=scale, initial_state_BHKV=initial_state)


def _run_xla(q, k, v, g, beta, *, scale, initial_state, chunk_size, interpret, block_sizes):
    return kda_chunked(q, k, v, g, beta, scale=scale, initial_state_BHKV=initial_state,
                       chunk_size=chunk_size)


def _run_pallas(q, k, v, g, beta, *, scale, initial_state, chunk_size, interpret,
                block_sizes):
    variant = pallas.default_variant()
    interpret = pallas.resolve_interpret(interpret, variant)
    if not interpret:
        interpret_rule.require_platform(
            variant, what=f"kda(implementation='pallas') compiles the {variant} kernels, which")
    return pallas.kda_pallas(q, k, v, g, beta, scale=scale, initial_state=initial_state,
                             chunk_size=chunk_size, interpret=interpret, variant=variant,
                             block_sizes=block_sizes)


# Each path: ``(q, k, v, g, beta, *, scale, initial_state, chunk_size, interpret,
# block_sizes) -> (o, state float32)``, inputs already checked.
_PATHS = {"reference": _run_reference, "xla": _run_xla, "pallas": _run_pallas}
IMPLEMENTATIONS = tuple(_PATHS)


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_inputs(q, k, v, g, beta, initial_state, chunk_size, implementation):
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"kda: unknown implementation={implementation!r}; use one of {IMPLEMENTATIONS}.")
    for name, x, nd in (("q", q, 4), ("k", k, 4), ("v", v, 4), ("g", g, 4), ("beta", beta, 3)):
        if getattr(x, "ndim", None) != nd:
            raise ValueError(f"kda: {name} must have {nd} dimensions, got shape "
                             f"{getattr(x, 'shape', None)}; expected layout q/k/g [B, T, H, K], "
                             "v [B, T, H, V], beta [B, T, H].")
        if jnp.dtype(x.dtype) not in _FLOAT_DTYPES:
            raise ValueError(f"kda: {name} has dtype {x.dtype}; cast it to float32 or bfloat16.")
    B, T, H, K = q.shape
    if k.shape != q.shape:
        raise ValueError(f"kda: k shape {k.shape} must equal q shape {q.shape}.")
    if g.shape != q.shape:
        raise ValueError(f"kda: g shape {g.shape} must equal q shape {q.shape} "
                         "(one log-decay per key channel).")
    if v.shape[:3] != (B, T, H):
        raise ValueError(f"kda: v shape {v.shape} must be [B, T, H, V] = [{B}, {T}, {H}, V].")
    if beta.shape != (B, T, H):
        raise ValueError(f"kda: beta shape {beta.shape} must be [B, T, H] = {(B, T, H)}.")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"kda: q, k, v must share one dtype, got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}; cast them to the same dtype.")
    V = v.shape[-1]
    if initial_state is not None:
        if initial_state.shape != (B, H, K, V):
            raise ValueError(f"kda: initial_state shape {initial_state.shape} must be "
                             f"[B, H, K, V] = {(B, H, K, V)}.")
        if initial_state.dtype != jnp.float32:
            raise ValueError(f"kda: initial_state has dtype {initial_state.dtype}; the state is "
                             "float32, pass initial_state.astype(jnp.float32).")
    if not isinstance(chunk_size, int) or chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"kda: chunk_size={chunk_size!r} must be a power of two >= 16 "
                         "(e.g. 64, the default).")
    # Value checks need concrete arrays; under jit/grad tracing they are skipped.
    if _is_concrete(g):
        g_np = np.asarray(jnp.asarray(g, jnp.float32))
        if not np.all(np.isfinite(g_np)):
            raise ValueError("kda: g contains non-finite values; g is a log-decay and must be "
                             "finite and <= 0 (e.g. g = -exp(A_log) * softplus(...)).")
        if np.any(g_np > 0):
            raise ValueError(f"kda: g must be <= 0 (log of a decay in (0, 1]); max is "
                             f"{g_np.max():.4g}. Compute it as a negative quantity.")
    # beta is a closed-interval quantity: sigmoid saturates to exactly 1.0 (above a
    # logit of ~17 in float32, ~7 in bfloat16) and 0 writes nothing; both are valid.
    if _is_concrete(beta):
        b_np = np.asarray(jnp.asarray(beta, jnp.float32))
        if not np.all(np.isfinite(b_np)):
            raise ValueError("kda: beta contains non-finite values; it must lie in [0, 1] "
                             "(e.g. sigmoid of a finite logit).")
        if np.any((b_np < 0) | (b_np > 1)):
            raise ValueError(f"kda: beta must lie in [0, 1] (e.g. sigmoid of a logit); got "
                             f"values in [{b_np.min():.4g}, {b_np.max():.4g}].")


def kda(q, k, v, g, beta, *, scale=None, initial_state=None, output_final_state=False,
        chunk_size=64, implementation="xla", interpret=None, block_sizes=None):
    """Kimi Delta Attention over a whole sequence.

    Args:
      q, k: ``[B, T, H, K]``, already L2-normalised by the caller (not normalised here).
      v: ``[B, T, H, V]``; q, k, v share one dtype (float32 or bfloat16).
      g: ``[B, T, H, K]`` natural-log decay per key channel, finite and ``<= 0``.
      beta: ``[B, T, H]`` write strength in ``[0, 1]`` (0 writes nothing, 1 replaces
        the value stored under k; sigmoid saturates to exactly 1.0 in float32/bfloat16).
      scale: multiplies q; defaults to ``K ** -0.5``.
      initial_state: optional float32 ``[B, H, K, V]``.
      output_final_state: also return the float32 state after the last token.
      chunk_size: chunk length of the xla/pallas paths, a power of two >= 16 (pallas also
        needs it <= 128).
      implementation: ``"reference" | "xla" | "pallas"`` (``IMPLEMENTATIONS``).
      interpret: pallas only; the shared rule of ``kernels/interpret.py``: an explicit
        value wins, ``None`` interprets exactly when the backend is not the kernels'
        platform, i.e. on CPU (logged once). ``False`` on CPU raises.
      block_sizes: pallas only; launch parameters, default ``BlockSizes.get_default()``.

    Returns:
      ``(o, final_state)``: ``o`` is ``[B, T, H, V]`` in v's dtype; ``final_state`` is the
      float32 ``[B, H, K, V]`` state, or ``None`` unless ``output_final_state``.

    Raises:
      ValueError on bad shapes/dtypes/implementation. Value checks (g finite and <= 0,
      beta finite and in [0, 1]) run only on concrete arrays: under ``jit``/``grad``
      tracing the values are unknown and those checks are skipped.
    """
    _check_inputs(q, k, v, g, beta, initial_state, chunk_size, implementation)
    K = q.shape[-1]
    scale = float(K ** -0.5 if scale is None else scale)
    o, state = _PATHS[implementation](q, k, v, g, beta, scale=scale,
                                      initial_state=initial_state, chunk_size=chunk_size,
                                      interpret=interpret, block_sizes=block_sizes)
    o = o.astype(v.dtype)
    return o, (state if output_final_state else None)
