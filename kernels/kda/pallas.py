"""KDA with Pallas kernels and a hand-written backward (``implementation="pallas"``).

Pipeline (kernels in ``pallas_common.py``, ``pallas_state.py``, ``pallas_tpu.py``,
``pallas_gpu.py``):

forward   1. XLA: pad T to a multiple of C, move to ``[B, H, T, D]``,
             ``decay = exp(sum of g)`` per chunk; inside ``_kda_core`` the in-chunk prefix
             and suffix sums ``G, Gs`` of g (``chunk_sums``).
          2. ``intra_fwd`` (all chunks in parallel): ``W, U, Aqk``.
          3. ``state_fwd`` (sequential over chunks): outputs ``O`` and the final state.
backward  recomputes 1-3 (3 now also writing the per-chunk start states ``h``), then
          4. ``state_bwd`` (reverse over chunks): ``dS`` and per-chunk ``dW, dU, dAqk``
             plus the parts of ``dq, dk`` and of the log-decay gradient (``dG1`` w.r.t.
             ``G``, ``dGs`` w.r.t. ``Gs``) flowing through the state pass,
          5. ``intra_bwd`` (parallel): ``dq, dk, dv, dG, dbeta`` through ``Tinv`` and the
             decayed score matrices,
          6. XLA: ``dg`` from ``dG`` and ``dGs`` (``log_decay_grad``); XLA autodiff of
             step 1 adds the part through ``decay``.

Numerics. The kernels take the per-token log-decays ``g``, not the cumulative ``G``:
every decay exponent they need (``G_i - G_j`` of the score matrices, ``G_last - G_i``
of the state update) is summed from the ``g`` terms it spans rather than taken as a
difference of cumulative sums, which with strong decays (``|G|`` in the hundreds within
a chunk) loses ``|G| * 6e-8`` of every exponent, i.e. that relative accuracy in every
decay factor. ``dg`` is then assembled here from gradients w.r.t. those sums, each turned
into ``dg`` by the cumulative sum matching its exponent's span (``log_decay_grad``), with
no total-minus-partial-sum cancellation. At g ~ U[-10, -2] per step (chunk 64) this took
the relative RMS error of ``dg`` against a float64 recurrence from 9e-6 to 4e-7 (the
float32 token recurrence itself: 1e-7), and that of the final state from 8e-7 to 5e-8.

Only the middle (``_kda_core``) is a ``custom_vjp``; residuals are just its inputs.
Variants: ``"tpu"`` (``pallas_tpu.py``, Mosaic; sequential grid axis + VMEM scratch
state) and ``"gpu"`` (``pallas_gpu.py``, Triton; in-kernel loop over chunks, the state
pass split over V tiles of ``BlockSizes.block_v`` and the intra-chunk kernels looping
over column tiles of ``block_k`` / ``block_v``); each module has the same four
functions. Interpret mode follows ``kernels/interpret.py`` (``resolve_interpret``
below). Supported tiles: K and V powers of two in [16, 256] on both variants, chunk size
a power of two in [16, 128]; otherwise a ValueError points to ``implementation="xla"``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging

import jax
import jax.numpy as jnp
from jax import lax

from kernels import interpret as interpret_rule
from kernels.kda import pallas_gpu, pallas_tpu
from kernels.kda.chunked import pad_to_chunks

_log = logging.getLogger(__name__)
_F32 = jnp.float32
MAX_HEAD_DIM = {"tpu": 256, "gpu": 256}
VARIANTS = {"tpu": pallas_tpu, "gpu": pallas_gpu}
_logged_interpret = False


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Launch parameters of the Pallas GPU kernels (they change speed, not results).

    The chunk length is the op's ``chunk_size`` argument and the sub-chunk is fixed at 16
    (``chunked_decay.SUB_CHUNK``); what is left to tune are the Triton tiles and launch
    parameters (the TPU kernels have none: they always take whole head dims):

    Attributes:
      block_k: key channels per in-kernel column tile of the intra-chunk kernels (the
        ``[C, C]`` score matrices are accumulated tile by tile; the per-channel gradients
        are written tile by tile). Shared memory of those kernels grows with it.
      block_v: value channels per tile: the state pass runs one program per
        ``(batch, head, V tile)`` holding a ``[K, block_v]`` state, and the intra-chunk
        kernels loop over V in tiles of this width.
      num_warps: warps of the intra-chunk kernels on GPU.
      state_num_warps: warps of the state-pass kernels on GPU.
      num_stages: Triton pipeline stages of every GPU kernel.

    Tiles wider than a head dim are clamped to it. The defaults were the fastest of the
    tiles tried on an H200 (``pallas_gpu.py``'s docstring, with the estimated shared
    memory per kernel); ``block_v`` also sets how many partial copies (``V / block_v``)
    of the V-reduced state-pass gradients the backward writes before XLA sums them.
    """
    block_k: int = 16
    block_v: int = 16
    num_warps: int = 8
    state_num_warps: int = 4
    num_stages: int = 1

    def __post_init__(self):
        for name in ("block_k", "block_v"):
            n = getattr(self, name)
            if not isinstance(n, int) or n < 16 or n > 256 or n & (n - 1):
                raise ValueError(f"BlockSizes.{name}={n!r} must be a power of two in "
                                 f"[16, 256] (e.g. {getattr(BlockSizes, name)}); smaller "
                                 "tiles use less shared memory.")
        for name in ("num_warps", "state_num_warps"):
            n = getattr(self, name)
            if not isinstance(n, int) or n <= 0 or n & (n - 1):
                raise ValueError(f"BlockSizes.{name}={n!r} must be a power of two (e.g. "
                                 f"{getattr(BlockSizes, name)}).")
        if not isinstance(self.num_stages, int) or self.num_stages <= 0:
            raise ValueError(f"BlockSizes.num_stages={self.num_stages!r} must be a positive "
                             "int (e.g. 1).")

    @classmethod
    def get_default(cls) -> BlockSizes:
        """The sizes ``kda`` uses when none are given."""
        return cls()


def default_variant():
    """The kernels for the running backend: ``"gpu"`` on GPU, else ``"tpu"`` (on CPU the
    TPU kernels run in interpret mode)."""
    return "gpu" if jax.default_backend() == "gpu" else "tpu"


def resolve_interpret(interpret, variant=None):
    """``kernels.interpret.resolve_interpret`` for the ``variant`` kernels (default: the
    backend's, ``default_variant``): ``None`` -> interpret exactly when the backend is
    not the kernels' platform, i.e. on CPU (logged once)."""
    global _logged_interpret
    resolved = interpret_rule.resolve_interpret(interpret,
                                                platform=variant or default_variant())
    if interpret is None and resolved and not _logged_interpret:
        _log.info(interpret_rule.interpret_message("kda(implementation='pallas')"))
        _logged_interpret = True
    return resolved


def check_tiles(K: int, V: int, chunk_size: int, variant: str):
    pow2 = lambda n: n > 0 and n & (n - 1) == 0
    hi = MAX_HEAD_DIM[variant]
    for name, d in (("K (q/k head dim)", K), ("V (v head dim)", V)):
        if not (pow2(d) and 16 <= d <= hi):
            raise ValueError(f"kda pallas: {name}={d} is too large or not supported by the "
                             f"{variant} kernel tiles (need a power of two in [16, {hi}]); "
                             "use implementation='xla'.")
    if not (pow2(chunk_size) and 16 <= chunk_size <= 128):
        raise ValueError(f"kda pallas: chunk_size={chunk_size} must be a power of two in "
                         "[16, 128] (default 64).")


def unsupported_reason(K: int, V: int, chunk_size: int, variant: str | None = None) -> str | None:
    """Why the ``variant`` kernels (default: the backend's) cannot take these tiles
    (the message :func:`check_tiles` raises), or ``None``."""
    try:
        check_tiles(K, V, chunk_size, variant or default_variant())
    except ValueError as e:
        return str(e)
    return None


def _chunked(x, C):
    B, H, Tp, K = x.shape
    return x.reshape(B, H, Tp // C, C, K)


def chunk_sums(g, C):
    """In-chunk sums of the log-decays ``g [B, H, Tp, K]``: the prefix ``G_i = sum_{t<=i}
    g_t`` and the suffix ``Gs_i = sum_{t>i} g_t`` (``= G_last - G_i``, but summed
    directly: as a difference of two prefix sums of size up to hundreds it would lose
    ``|G| * 6e-8`` absolute, i.e. relative accuracy of ``exp(Gs)`` near the chunk end,
    where it is not negligible)."""
    g_c = _chunked(g, C)
    G = jnp.cumsum(g_c, axis=3)
    suffix = lax.cumsum(g_c, axis=3, reverse=True)
    Gs = jnp.concatenate([suffix[:, :, :, 1:], jnp.zeros_like(suffix[:, :, :, :1])], axis=3)
    return G.reshape(g.shape), Gs.reshape(g.shape)


def log_decay_grad(dG, dGs, C):
    """``dg`` from the gradients w.r.t. the prefix sums (``dG``: reverse cumulative sum,
    ``dg_t = sum_{i >= t} dG_i``) and the suffix sums (``dGs``: exclusive forward one,
    ``dg_t = sum_{i < t} dGs_i``) of ``chunk_sums``, within each chunk."""
    dG_c, dGs_c = _chunked(dG, C), _chunked(dGs, C)
    prefix = jnp.cumsum(dGs_c, axis=3)
    prefix = jnp.concatenate([jnp.zeros_like(prefix[:, :, :, :1]), prefix[:, :, :, :-1]],
                             axis=3)
    return (lax.cumsum(dG_c, axis=3, reverse=True) + prefix).reshape(dG.shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(7, 8, 9, 10, 11))
def _kda_core(q, k, v, g, beta, decay, s0, scale, C, variant, block_sizes, interpret):
    return _core_fwd(q, k, v, g, beta, decay, s0, scale, C, variant, block_sizes,
                     interpret)[0]


def _core_fwd(q, k, v, g, beta, decay, s0, scale, C, variant, block_sizes, interpret):
    kern = VARIANTS[variant]
    kw = dict(scale=scale, C=C, block_sizes=block_sizes, interpret=interpret)
    W, U, Aqk = kern.intra_fwd(q, k, v, g, beta, **kw)
    G, Gs = chunk_sums(g, C)
    o, sT = kern.state_fwd(q, k, G, Gs, W, U, Aqk, decay, s0, out_dtype=v.dtype,
                           with_states=False, **kw)
    return (o, sT), (q, k, v, g, beta, decay, s0)


def _core_bwd(scale, C, variant, block_sizes, interpret, res, cts):
    q, k, v, g, beta, decay, s0 = res
    dO, dsT = cts
    kern = VARIANTS[variant]
    kw = dict(scale=scale, C=C, block_sizes=block_sizes, interpret=interpret)
    W, U, Aqk = kern.intra_fwd(q, k, v, g, beta, **kw)
    G, Gs = chunk_sums(g, C)
    _, _, h = kern.state_fwd(q, k, G, Gs, W, U, Aqk, decay, s0, out_dtype=v.dtype,
                             with_states=True, **kw)
    dW, dU, dAqk, dq1, dk1, dG1, dGs, ddecay, ds0 = kern.state_bwd(
        q, k, G, Gs, W, U, Aqk, decay, h, dO, dsT.astype(_F32), **kw)
    dq, dk, dv, dG, dbeta = kern.intra_bwd(q, k, v, g, beta, dW, dU, dAqk, dq1, dk1, dG1, **kw)
    return dq, dk, dv, log_decay_grad(dG, dGs, C), dbeta, ddecay, ds0


_kda_core.defvjp(_core_fwd, _core_bwd)


def kda_pallas(q_BTHK, k_BTHK, v_BTHV, g_BTHK, beta_BTH, *, scale, initial_state=None,
               chunk_size=64, interpret=False, variant=None, block_sizes=None):
    """Pallas KDA. Returns ``(o_BTHV in v dtype, state_BHKV float32)``.

    ``interpret``: a plain bool here (the op resolves ``None``, ``resolve_interpret``).
    ``variant``: ``"tpu"`` or ``"gpu"`` kernels (default: by backend; ``"tpu"`` on CPU).
    ``block_sizes``: launch parameters, default ``BlockSizes.get_default()``.
    """
    B, T, H, K = q_BTHK.shape
    V = v_BTHV.shape[-1]
    C = chunk_size
    variant = variant or default_variant()
    if variant not in VARIANTS:
        raise ValueError(f"kda pallas: variant={variant!r} must be 'tpu' or 'gpu'.")
    check_tiles(K, V, C, variant)
    block_sizes = block_sizes or BlockSizes.get_default()
    pad = pad_to_chunks(T, C)
    N = (T + pad) // C

    def to_bhtd(x, dtype=None):
        x = x if dtype is None else x.astype(dtype)
        if pad:
            x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2))
        return jnp.moveaxis(x, 2, 1)

    q, k, v = to_bhtd(q_BTHK), to_bhtd(k_BTHK), to_bhtd(v_BTHV)
    g = to_bhtd(g_BTHK, _F32)
    decay = jnp.exp(jnp.sum(g.reshape(B, H, N, C, K), axis=3)).reshape(B, H, N * K, 1)
    beta = to_bhtd(beta_BTH, _F32)[..., None]  # [B, H, Tp, 1]
    s0 = jnp.zeros((B, H, K, V), _F32) if initial_state is None else initial_state
    o, sT = _kda_core(q, k, v, g, beta, decay, s0, float(scale), C, variant, block_sizes,
                      bool(interpret))
    return jnp.moveaxis(o[:, :, :T], 1, 2), sT
