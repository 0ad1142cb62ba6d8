"""Causal softmax attention computed in query blocks (the fast exact path on CPU).

    from kernels.causal import blocked_attention
    o = blocked_attention(q, k, v, query_block=256)

See :mod:`kernels.causal.blocked`.
"""
from kernels.causal.blocked import DEFAULT_QUERY_BLOCK, blocked_attention, blocked_key_counts

__all__ = ["DEFAULT_QUERY_BLOCK", "blocked_attention", "blocked_key_counts"]
