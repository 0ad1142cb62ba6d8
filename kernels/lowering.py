"""Cross-platform lowering: compile-check kernels for TPU or GPU on any machine.

``lower_for(fn, args, "tpu")`` traces ``jax.jit(fn)`` on ``args`` (arrays or
``jax.ShapeDtypeStruct``s) and lowers it for ``platform`` ("tpu", "cuda", "rocm"
or "cpu") without that hardware being present.  Pallas kernels are lowered to
Mosaic (TPU) or Triton (GPU) IR on the way, so shape, layout and unsupported-op
errors of a kernel surface here, on a CPU-only test machine.  The final
device compilation (Mosaic / ptxas) still happens only on the target.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax

# Custom-call targets that carry a compiled Pallas kernel in the lowered module.
KERNEL_CALL_TARGETS = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton",
                       "rocm": "__gpu$xla.gpu.triton"}


def lower_for(fn: Callable[..., Any], args: Sequence[Any], platform: str) -> str:
    """StableHLO text of ``jax.jit(fn)(*args)`` lowered for ``platform``; raises on failure."""
    traced = jax.jit(fn).trace(*args)
    return traced.lower(lowering_platforms=(platform,)).as_text()
