"""Attention kinds. Importing this package registers every built-in kind."""
from moba_jax.attention.registry import (UnknownAttentionError, get_attention, known_kinds,
                                         register_attention)
from moba_jax.attention import full  # noqa: F401  (registers "full")

__all__ = ["UnknownAttentionError", "get_attention", "known_kinds", "register_attention"]
