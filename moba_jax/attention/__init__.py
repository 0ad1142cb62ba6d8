"""Attention kinds. Importing this package registers every built-in kind."""
from moba_jax.attention.registry import (UnknownAttentionError, default_options, get_attention,
                                         known_kinds, register_attention)
from moba_jax.attention import full, kda, mla, moba  # noqa: F401  (registers the kinds)

__all__ = ["UnknownAttentionError", "default_options", "get_attention", "known_kinds",
           "register_attention"]
