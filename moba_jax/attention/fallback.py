"""Kernel fallback for attention layers: a layer configured for a Pallas kernel whose
tiles cannot take its shapes (a head dim that is not a power of two, say: the default
sweep's 24) runs the exact ``xla`` path instead, and says so once per reason.

The ops themselves (``kernels.moba.moba_attention``, ``kernels.kda.kda``) still raise
on such shapes when called directly: a benchmark or test that names a kernel gets that
kernel or an error, never a silent substitute.
"""
from __future__ import annotations

import logging

log = logging.getLogger("moba_jax")
_warned: set[str] = set()


def resolve(option: str, implementation: str, reason: str | None) -> str:
    """``implementation``, or ``"xla"`` when ``reason`` (why the kernel cannot run) is
    given; the first time a reason is seen it is logged as a warning naming the option
    and the fix."""
    if reason is None:
        return implementation
    message = (f"{option}={implementation!r} falls back to 'xla' (exact, slower on an "
               f"accelerator): {reason.rstrip('.')}. Set {option}='xla' to silence this, or "
               "pick shapes the kernel takes")
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)
    return "xla"
