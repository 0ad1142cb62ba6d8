"""The registry of attention kinds.

A model config names the attention of each layer (``"full"``, ``"moba"``, ...);
:func:`get_attention` resolves the name to an NNX module class. Adding an
attention kind is one module plus one ``@register_attention("name")`` line.

Every registered class is constructed as ``cls(cfg, layer_idx, *, rngs)`` where
``cfg`` is the model ``ConfigDict``, and called as
``layer(x_BTD, positions_BT) -> y_BTD``. Its kind-specific options live in
``cfg.attention.<name>`` (for example ``cfg.attention.moba.top_k``); the class's
``default_options()`` supplies them in the default model config.
"""
from __future__ import annotations

from typing import Callable

_REGISTRY: dict[str, type] = {}


class UnknownAttentionError(ValueError):
    """An attention kind that is not registered."""


def register_attention(name: str) -> Callable[[type], type]:
    def wrap(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"attention kind {name!r} is registered twice")
        _REGISTRY[name] = cls
        cls.kind = name
        return cls
    return wrap


def get_attention(name: str) -> type:
    if name not in _REGISTRY:
        raise UnknownAttentionError(
            f"model.attention_pattern: unknown attention kind {name!r}; "
            f"known kinds: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def known_kinds() -> list[str]:
    return sorted(_REGISTRY)


def default_options() -> dict[str, dict]:
    """``{kind: options}`` of every registered kind (each class's ``default_options()``)."""
    return {k: dict(cls.default_options()) if hasattr(cls, "default_options") else {}
            for k, cls in sorted(_REGISTRY.items())}
