"""Cross-platform lowering: compile-check kernels for TPU or GPU on any machine.

``lower_for(fn, args, "tpu")`` traces ``jax.jit(fn)`` on ``args`` (arrays or
``jax.ShapeDtypeStruct``s) and lowers it for ``platform`` ("tpu", "cuda", "rocm"
or "cpu") without that hardware being present.  Pallas kernels are lowered to
Mosaic (TPU) or Triton (GPU) IR on the way, so shape, layout and unsupported-op
errors of a kernel surface here, on a CPU-only test machine.  The final
device compilation (Mosaic / ptxas) still happens only on the target.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Sequence

import jax

# Custom-call targets that carry a compiled Pallas kernel in the lowered module.
KERNEL_CALL_TARGETS = {"tpu": "tpu_custom_call", "cuda": "__gpu$xla.gpu.triton",
                       "rocm": "__gpu$xla.gpu.triton"}


# The GPU that Triton kernels are lowered for when none is present (jax 0.11's Pallas
# Triton lowering reads the target's compute capability from the device).
ABSTRACT_GPU = "NVIDIA H100"


def target_context(platform: str):
    """An abstract one-device mesh naming :data:`ABSTRACT_GPU` when lowering for a GPU on
    a machine without one; otherwise nothing."""
    if platform not in ("cuda", "rocm") or jax.default_backend() == "gpu":
        return contextlib.nullcontext()
    device = jax.sharding.AbstractDevice(device_kind=ABSTRACT_GPU, num_cores=None,
                                         platform="gpu")
    mesh = jax.sharding.AbstractMesh((1,), ("lowering",), abstract_device=device)
    return jax.sharding.use_abstract_mesh(mesh)


def lower_for(fn: Callable[..., Any], args: Sequence[Any], platform: str) -> str:
    """StableHLO text of ``jax.jit(fn)(*args)`` lowered for ``platform``; raises on failure.

    For ``"cuda"``/``"rocm"`` on a machine without a GPU the lowering targets an abstract
    :data:`ABSTRACT_GPU` (jax 0.11 needs a target GPU to lower Triton kernels for).
    """
    with target_context(platform):
        traced = jax.jit(fn).trace(*args)
        return traced.lower(lowering_platforms=(platform,)).as_text()
