"""Attention kinds. Importing this package registers every built-in kind."""
from moba_jax.attention.registry import (AttentionContractError, UnknownAttentionError,
                                         default_options, describe, get_attention, import_kinds,
                                         kind_sources, known_kinds, register_attention)
from moba_jax.attention import full, kda, mla, moba  # noqa: F401  (registers the kinds)

__all__ = ["AttentionContractError", "UnknownAttentionError", "default_options", "describe",
           "get_attention", "import_kinds", "kind_sources", "known_kinds", "register_attention"]
