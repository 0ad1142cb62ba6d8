"""KDA with Pallas kernels and a hand-written backward (``implementation="pallas"``).

Pipeline (see ``pallas_intra.py`` and ``pallas_state.py`` for the kernels):

forward   1. XLA: pad T to a multiple of C, move to ``[B, H, T, D]``, ``G = cumsum(g)``
             within each chunk, ``decay = exp(G_last)`` per chunk.
          2. ``intra_fwd`` (all chunks in parallel): ``W, U, Aqk``.
          3. ``state_fwd`` (sequential over chunks): outputs ``O`` and the final state.
backward  recomputes 2 and 3 (3 now also writing the per-chunk start states ``h``), then
          4. ``state_bwd`` (reverse over chunks): ``dS`` and per-chunk ``dW, dU, dAqk``
             plus the parts of ``dq, dk, dG`` flowing through the state pass,
          5. ``intra_bwd`` (parallel): ``dq, dk, dv, dG, dbeta`` through ``T`` and the
             decayed score matrices.
          XLA autodiff of step 1 turns ``dG`` into ``dg`` (the transpose of the in-chunk
          cumsum is a reverse cumsum within the chunk) and routes ``ddecay`` through
          ``exp(G_last)``.

Only the middle (``_kda_core``) is a ``custom_vjp``; residuals are just its inputs.
Variants: ``"tpu"`` (Mosaic; sequential grid axis + VMEM scratch state) and ``"gpu"``
(Triton; in-kernel loop over chunks). On CPU the kernels run with ``interpret=True``.
Supported tiles: K and V powers of two in [16, 256] on TPU and in [16, 64] on GPU (with
128 the Triton intra-chunk kernels asked for 294912 bytes of shared memory on an H100,
which has 232448), chunk size a power of two in [16, 128]; otherwise a ValueError points
to ``implementation="xla"``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp

from kernels.kda import pallas_intra, pallas_state
from kernels.kda.chunked import pad_to_chunks

_log = logging.getLogger(__name__)
_F32 = jnp.float32
MAX_HEAD_DIM = {"tpu": 256, "gpu": 64}
_logged_interpret = False


def resolve_interpret(interpret):
    """``None`` -> interpret mode exactly when the default backend is CPU (logged once)."""
    global _logged_interpret
    if interpret is not None:
        return bool(interpret)
    if jax.default_backend() == "cpu":
        if not _logged_interpret:
            _log.info("kda(implementation='pallas'): CPU backend, running kernels with interpret=True.")
            _logged_interpret = True
        return True
    return False


def default_variant():
    return "gpu" if jax.default_backend() == "gpu" else "tpu"


def check_tiles(K: int, V: int, chunk_size: int, variant: str):
    pow2 = lambda n: n > 0 and n & (n - 1) == 0
    hi = MAX_HEAD_DIM[variant]
    for name, d in (("K (q/k head dim)", K), ("V (v head dim)", V)):
        if not (pow2(d) and 16 <= d <= hi):
            raise ValueError(f"kda pallas: {name}={d} is too large or not supported by the "
                             f"{variant} kernel tiles (need a power of two in [16, {hi}]); use "
                             "implementation='xla'.")
    if not (pow2(chunk_size) and 16 <= chunk_size <= 128):
        raise ValueError(f"kda pallas: chunk_size={chunk_size} must be a power of two in "
                         "[16, 128] (default 64).")


@dataclasses.dataclass(frozen=True)
class _Config:
    scale: float
    C: int
    variant: str
    interpret: bool

    def params(self):
        if self.variant == "tpu":
            from jax.experimental.pallas import tpu as pltpu
            return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel", "parallel"))
        from jax.experimental.pallas import triton as pltriton
        return pltriton.CompilerParams(num_warps=8, num_stages=1)

    def state_fwd(self, *args, **kw):
        fn = pallas_state.state_fwd_tpu if self.variant == "tpu" else pallas_state.state_fwd_gpu
        return fn(*args, scale=self.scale, C=self.C, interpret=self.interpret, **kw)

    def state_bwd(self, *args):
        fn = pallas_state.state_bwd_tpu if self.variant == "tpu" else pallas_state.state_bwd_gpu
        return fn(*args, scale=self.scale, C=self.C, interpret=self.interpret)

    def intra_fwd(self, *args):
        return pallas_intra.intra_fwd(*args, scale=self.scale, C=self.C,
                                      compiler_params=self.params(), interpret=self.interpret)

    def intra_bwd(self, *args):
        return pallas_intra.intra_bwd(*args, scale=self.scale, C=self.C,
                                      compiler_params=self.params(), interpret=self.interpret)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
def _kda_core(q, k, v, G, beta, decay, s0, cfg):
    return _core_fwd(q, k, v, G, beta, decay, s0, cfg)[0]


def _core_fwd(q, k, v, G, beta, decay, s0, cfg):
    W, U, Aqk = cfg.intra_fwd(q, k, v, G, beta)
    o, sT = cfg.state_fwd(q, k, G, W, U, Aqk, decay, s0, out_dtype=v.dtype, with_states=False)
    return (o, sT), (q, k, v, G, beta, decay, s0)


def _core_bwd(cfg, res, cts):
    q, k, v, G, beta, decay, s0 = res
    dO, dsT = cts
    W, U, Aqk = cfg.intra_fwd(q, k, v, G, beta)
    _, _, h = cfg.state_fwd(q, k, G, W, U, Aqk, decay, s0, out_dtype=v.dtype, with_states=True)
    dW, dU, dAqk, dq1, dk1, dG1, ddecay, ds0 = cfg.state_bwd(
        q, k, G, W, U, Aqk, decay, h, dO, dsT.astype(_F32))
    dq, dk, dv, dG, dbeta = cfg.intra_bwd(q, k, v, G, beta, dW, dU, dAqk, dq1, dk1, dG1)
    return dq, dk, dv, dG, dbeta, ddecay, ds0


_kda_core.defvjp(_core_fwd, _core_bwd)


def kda_pallas(q_BTHK, k_BTHK, v_BTHV, g_BTHK, beta_BTH, *, scale, initial_state=None,
               chunk_size=64, interpret=False, variant=None):
    """Pallas KDA. Returns ``(o_BTHV in v dtype, state_BHKV float32)``.

    ``variant``: ``"tpu"`` or ``"gpu"`` kernels (default: by backend; ``"tpu"`` on CPU).
    """
    B, T, H, K = q_BTHK.shape
    V = v_BTHV.shape[-1]
    C = chunk_size
    variant = variant or default_variant()
    if variant not in ("tpu", "gpu"):
        raise ValueError(f"kda pallas: variant={variant!r} must be 'tpu' or 'gpu'.")
    check_tiles(K, V, C, variant)
    cfg = _Config(scale=float(scale), C=C, variant=variant, interpret=bool(interpret))
    pad = pad_to_chunks(T, C)
    Tp, N = T + pad, (T + pad) // C

    def to_bhtd(x, dtype=None):
        x = x if dtype is None else x.astype(dtype)
        if pad:
            x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x, 2, 1)

    q, k, v = to_bhtd(q_BTHK), to_bhtd(k_BTHK), to_bhtd(v_BTHV)
    g = to_bhtd(g_BTHK, _F32)
    G = jnp.cumsum(g.reshape(B, H, N, C, K), axis=3)
    decay = jnp.exp(G[:, :, :, C - 1, :]).reshape(B, H, N * K, 1)
    G = G.reshape(B, H, Tp, K)
    beta = to_bhtd(beta_BTH, _F32)[..., None]  # [B, H, Tp, 1]
    s0 = jnp.zeros((B, H, K, V), _F32) if initial_state is None else initial_state
    o, sT = _kda_core(q, k, v, G, beta, decay, s0, cfg)
    return jnp.moveaxis(o[:, :, :T], 1, 2), sT
