"""Public MoBA op: argument checks, implementation choice and the ``custom_vjp``."""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from absl import logging

from kernels import interpret as interpret_rule
from kernels.moba import blocked, dispatch, reference, selection, xla

IMPLEMENTATIONS = ("reference", "xla", "blocked", "pallas", "pallas_tpu", "pallas_gpu")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
    """Tiling of the sparse paths (``xla``, ``blocked`` and the Pallas kernels).

    Attributes:
      block_rows: ``G``, sorted (token, head, slot) rows per tile; a multiple of 8
        (TPU sublanes), a power of two >= 16 for the GPU kernel. The ``blocked`` path's
        past-block tiles take it too (``blocked.DEFAULT_TILE_ROWS`` without a
        ``BlockSizes``).
      block_k: GPU kernel only: keys per inner step, a power of two >= 16 dividing
        ``block_size`` (the whole MoBA block is one step on TPU and in xla).
      num_warps, num_stages: GPU (Triton) launch parameters.
    """
    block_rows: int = 128
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 2

    def __post_init__(self):
        if self.block_rows <= 0 or self.block_rows % 8:
            raise ValueError(f"BlockSizes.block_rows={self.block_rows} must be a positive "
                             "multiple of 8; use e.g. 128.")
        if self.block_k <= 0:
            raise ValueError(f"BlockSizes.block_k={self.block_k} must be positive; use e.g. 64.")


def _check_args(q, k, v, block_size, top_k, implementation):
    if not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size={block_size!r} must be a positive int (MoBA uses 512).")
    if not isinstance(top_k, int) or top_k <= 0:
        raise ValueError(f"top_k={top_k!r} must be a positive int counting the current "
                         "block (top_k=1 is current-block-only attention; MoBA uses 3).")
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation={implementation!r} is unknown; choose one of "
                         f"{IMPLEMENTATIONS}.")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.ndim != 4:
            raise ValueError(f"{name} has shape {x.shape}; expected 4 dims [batch, seq, heads, "
                             "head_dim].")
    if k.shape != v.shape:
        raise ValueError(f"k {k.shape} and v {v.shape} must have the same shape.")
    if (q.shape[0], q.shape[1], q.shape[3]) != (k.shape[0], k.shape[1], k.shape[3]):
        raise ValueError(f"q {q.shape} and k {k.shape} must agree in batch, seq and "
                         "head_dim (dims 0, 1, 3).")
    if q.shape[2] % k.shape[2]:
        raise ValueError(f"query heads ({q.shape[2]}) must be a multiple of kv heads "
                         f"({k.shape[2]}) for GQA; pick num_kv_heads dividing num_heads.")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ ({q.dtype}, {k.dtype}, {v.dtype}); cast "
                         "them to one dtype (float32 or bfloat16).")
    if q.dtype not in (jnp.float32, jnp.bfloat16):
        raise ValueError(f"dtype {q.dtype} is unsupported; use float32 or bfloat16.")


def _resolve_pallas(implementation: str, interpret):
    """Returns ``(kernel module name, interpret flag)`` for a pallas request; the flag by
    the shared rule of ``kernels/interpret.py`` (explicit wins; ``None`` interprets
    where the kernel's platform is absent, logged once; ``False`` there raises)."""
    platform = jax.default_backend()
    if implementation == "pallas":
        variant = "pallas_tpu" if platform == "tpu" else "pallas_gpu"
    else:
        variant = implementation
    native = {"pallas_tpu": "tpu", "pallas_gpu": "gpu"}[variant]
    resolved = interpret_rule.resolve_interpret(interpret, platform=native)
    if interpret is None and resolved:
        logging.log_first_n(logging.WARNING, "%s", 1, interpret_rule.interpret_message(
            f"moba_attention(implementation={implementation!r})"))
    if not resolved:
        interpret_rule.require_platform(
            native, what=f"implementation={implementation!r} compiles the {variant} kernel, which")
    return variant, resolved


def _geometry(q, k, block_size, top_k, block_sizes) -> dispatch.Geometry:
    b, t, hq, d = q.shape
    return dispatch.Geometry(batch=b, seq_len=t, num_q_heads=hq, num_kv_heads=k.shape[2],
                             head_dim=d, block_size=block_size, top_k=top_k,
                             rows_per_tile=block_sizes.block_rows)


def _grouped_fns(variant: str):
    if variant == "xla":
        return xla.grouped_forward, xla.grouped_backward
    if variant == "pallas_tpu":
        from kernels.moba import pallas_tpu
        return pallas_tpu.grouped_forward, pallas_tpu.grouped_backward
    from kernels.moba import pallas_gpu
    return pallas_gpu.grouped_forward, pallas_gpu.grouped_backward


def _kernel_kwargs(variant, block_sizes, interpret):
    if variant == "xla":
        return {}
    return {"block_sizes": block_sizes, "interpret": interpret}


def _sparse_forward(q, k, v, block_size, top_k, scale, variant, block_sizes, interpret):
    geo = _geometry(q, k, block_size, top_k, block_sizes)
    slots = selection.select_slots(q, k, block_size=block_size, top_k=top_k)
    plan = dispatch.make_plan(slots, geo)
    q_sorted = dispatch.sort_rows(dispatch.rows_from_heads(q, geo.num_kv_heads), plan)
    k_blocks = dispatch.blocks_from_keys(k, geo)
    v_blocks = dispatch.blocks_from_keys(v, geo)
    fwd, _ = _grouped_fns(variant)
    o_sorted, lse_sorted = fwd(q_sorted, k_blocks, v_blocks, plan, geo, scale,
                               **_kernel_kwargs(variant, block_sizes, interpret))
    o_rows, lse_rows = dispatch.merge_pairs(o_sorted, lse_sorted, plan, geo)
    out = dispatch.heads_from_rows(o_rows, geo).astype(q.dtype)
    return out, (q, k, v, out, lse_rows, plan)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6, 7, 8))
def _moba_sparse(q, k, v, block_size, top_k, scale, variant, block_sizes, interpret):
    return _sparse_forward(q, k, v, block_size, top_k, scale, variant, block_sizes,
                           interpret)[0]


def _moba_sparse_bwd(block_size, top_k, scale, variant, block_sizes, interpret, res, dout):
    q, k, v, out, lse_rows, plan = res
    geo = _geometry(q, k, block_size, top_k, block_sizes)
    g = geo.num_kv_heads
    do_rows = dispatch.rows_from_heads(dout, g)
    delta_rows = jnp.sum(do_rows.astype(jnp.float32) *
                         dispatch.rows_from_heads(out, g).astype(jnp.float32), axis=-1)
    q_sorted = dispatch.sort_rows(dispatch.rows_from_heads(q, g), plan)
    do_sorted = dispatch.sort_rows(do_rows.astype(q.dtype), plan)
    lse_sorted = dispatch.sort_rows(lse_rows, plan)
    delta_sorted = dispatch.sort_rows(delta_rows, plan)
    _, bwd = _grouped_fns(variant)
    dq_sorted, dk_blocks, dv_blocks = bwd(
        q_sorted, dispatch.blocks_from_keys(k, geo), dispatch.blocks_from_keys(v, geo),
        do_sorted, lse_sorted, delta_sorted, plan, geo, scale,
        **_kernel_kwargs(variant, block_sizes, interpret))
    dq = dispatch.heads_from_rows(dispatch.sum_pairs(dq_sorted, plan, geo), geo)
    dk = dispatch.keys_from_blocks(dk_blocks, geo)
    dv = dispatch.keys_from_blocks(dv_blocks, geo)
    return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


_moba_sparse.defvjp(_sparse_forward, _moba_sparse_bwd)


def moba_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, block_size: int,
                   top_k: int, scale: float | None = None, implementation: str = "xla",
                   block_sizes: BlockSizes | None = None,
                   interpret: bool | None = None) -> jax.Array:
    """Mixture-of-Block-Attention (causal).  See ``kernels.moba`` for the semantics.

    Args:
      q: ``[B, T, Hq, D]`` queries.
      k, v: ``[B, T, Hkv, D]`` keys and values; ``Hq % Hkv == 0`` (GQA).
      block_size: keys per block (``Bs``).
      top_k: blocks per query, the current block included.
      scale: softmax scale, default ``1 / sqrt(D)``.
      implementation: ``"reference"`` (dense, ``T^2``), ``"xla"`` (exact, linear in
        ``T``, any backend), ``"blocked"`` (exact, linear in ``T``: the current block
        as one causal tile per block, the chosen past blocks as tiles of one block each;
        the fast path on CPU, ``kernels/moba/blocked.py``), ``"pallas"`` (the kernel
        for this backend: TPU Mosaic or GPU Triton; interpreted elsewhere), or
        ``"pallas_tpu"`` / ``"pallas_gpu"`` to name the kernel variant explicitly.
      block_sizes: tiling of the sparse paths, default ``BlockSizes()``.
      interpret: Pallas only.  ``None``: interpret when the kernel's backend is
        absent (logged once); ``False`` on the wrong backend raises.

    Returns:
      ``[B, T, Hq, D]`` in ``q.dtype`` (accumulation in float32).
    """
    _check_args(q, k, v, block_size, top_k, implementation)
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if implementation == "reference":
        return reference.moba_attention_reference(q, k, v, block_size=block_size, top_k=top_k,
                                                  scale=scale)
    if implementation == "blocked":
        rows = block_sizes.block_rows if block_sizes else blocked.DEFAULT_TILE_ROWS
        return blocked.moba_blocked(q, k, v, block_size=block_size, top_k=top_k, scale=scale,
                                    tile_rows=rows)
    block_sizes = block_sizes or BlockSizes()
    if implementation == "xla":
        variant, interpret = "xla", False
    else:
        variant, interpret = _resolve_pallas(implementation, interpret)
    return _moba_sparse(q, k, v, block_size, top_k, float(scale), variant, block_sizes,
                        interpret)


def unsupported_reason(head_dim: int, block_size: int, *, implementation: str = "pallas",
                       block_sizes: BlockSizes | None = None,
                       platform: str | None = None) -> str | None:
    """Why the Pallas kernel that ``implementation`` names cannot take these shapes
    (``None``: it can). ``platform`` (default: the running backend) picks the variant of
    ``"pallas"`` as :func:`moba_attention` does. Other implementations take any shape."""
    if implementation not in ("pallas", "pallas_tpu", "pallas_gpu"):
        return None
    platform = platform or jax.default_backend()
    variant = implementation
    if implementation == "pallas":
        variant = "pallas_tpu" if platform == "tpu" else "pallas_gpu"
    geo = dispatch.Geometry(batch=1, seq_len=block_size, num_q_heads=1, num_kv_heads=1,
                            head_dim=head_dim, block_size=block_size, top_k=1,
                            rows_per_tile=(block_sizes or BlockSizes()).block_rows)
    try:
        if variant == "pallas_tpu":
            from kernels.moba import pallas_tpu
            pallas_tpu._check(geo)
        else:
            from kernels.moba import pallas_gpu
            pallas_gpu._check(geo, block_sizes or BlockSizes())
    except ValueError as e:
        return str(e)
    return None


def moba_select_blocks(q: jax.Array, k: jax.Array, *, block_size: int,
                       top_k: int) -> jax.Array:
    """Past blocks chosen per (token, query head), ``[B, T, Hq, top_k - 1]`` int32.

    Sorted ascending; ``-1`` pads tokens with fewer than ``top_k - 1`` past blocks.
    The current block ``t // block_size`` is always attended and is not listed.
    """
    _check_args(q, k, k, block_size, top_k, "xla")
    slots = selection.select_slots(q, k, block_size=block_size, top_k=top_k)
    return selection.past_blocks_from_slots(slots)
