"""When a Pallas kernel runs in interpret mode: one rule for every op in ``kernels/``.

Every Pallas kernel here is written for one platform: the Mosaic kernels for ``"tpu"``,
the Triton kernels for ``"gpu"``. The ``interpret=`` argument of an op
(``moba_attention``, ``kda``) resolves through ``resolve_interpret``:

* ``interpret=True`` or ``interpret=False`` given explicitly wins: the kernel runs in the
  Pallas interpreter, or is compiled for its platform.
* ``interpret=None`` (the default) interprets exactly when the running backend
  (``jax.default_backend()``) is not the kernel's platform. An op that picks the kernel
  for the backend (``implementation="pallas"`` of both ops) therefore compiles on GPU and
  TPU and interprets on CPU; a kernel named for other hardware
  (``moba_attention(implementation="pallas_tpu")`` on a GPU) is interpreted too. Each op
  logs ``interpret_message`` the first time it falls back to the interpreter.

An explicit ``interpret=False`` where the kernel's platform is absent cannot compile;
the ops then raise ``require_platform``'s ValueError, which names the fix. That check is
separate from the rule because lowering for another platform (``jax.export``, or
``kernels.lowering.lower_for`` in the tests) legitimately traces compiled kernels on a
CPU host: the kernels' own entry points take a plain ``interpret`` bool and do not
check.
"""
from __future__ import annotations

import jax

PLATFORMS = ("tpu", "gpu")


def _backend(backend: str | None) -> str:
    return backend or jax.default_backend()


def resolve_interpret(interpret: bool | None, *, platform: str,
                      backend: str | None = None) -> bool:
    """The interpret flag for a kernel written for ``platform`` (``"tpu"`` or ``"gpu"``).

    An explicit ``interpret`` wins; ``None`` means interpret exactly when the running
    backend (``backend``, default ``jax.default_backend()``) is not ``platform``.
    """
    if platform not in PLATFORMS:
        raise ValueError(f"platform={platform!r} must be one of {PLATFORMS}.")
    if interpret is not None:
        return bool(interpret)
    return _backend(backend) != platform


def interpret_message(op: str, backend: str | None = None) -> str:
    """What an op logs (once) when ``interpret=None`` resolved to interpret mode."""
    return f"{op}: {_backend(backend).upper()} backend, running kernels with interpret=True."


def require_platform(platform: str, *, what: str, backend: str | None = None) -> None:
    """Raises ValueError unless the running backend is ``platform``: a compiled
    (``interpret=False``) kernel cannot run elsewhere. ``what`` starts the message and
    names the kernel, e.g. ``"implementation='pallas_gpu' compiles the pallas_gpu kernel,
    which"``."""
    backend = _backend(backend)
    if backend != platform:
        raise ValueError(f"{what} needs a {platform} backend but this one is {backend!r}; "
                         "pass interpret=True (testing) or implementation='xla'.")
