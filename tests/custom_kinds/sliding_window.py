"""A user-defined attention kind, outside the moba_jax package: sliding-window attention.

This file is the example of docs/adding_an_attention_kind.md and is used by
``tests/test_custom_kind.py``: importing it registers the kind ``"swa"``, and from
then on configs can name it in ``model.attention_pattern`` like a built-in kind.
Nothing in the package is edited.

Each query attends causally to the last ``window`` positions (itself included).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from moba_jax.attention import register_attention
from moba_jax.attention.full import QKVOAttention, qkvo_flops


def window_mask(q_pos, k_pos, window: int):
    """``[S, L]`` bool: key at ``k_pos`` is visible to the query at ``q_pos``."""
    d = q_pos[:, None] - k_pos[None, :]
    return (d >= 0) & (d < window)


@register_attention("swa")
class SlidingWindowAttention(QKVOAttention):
    """Causal softmax attention over the last ``window`` positions."""

    display_name = "Sliding Window"
    colour_family = "Greens"
    switch_target = "full"          # same parameters as full attention

    @staticmethod
    def default_options() -> dict:
        return dict(window=32, rope=True)

    @staticmethod
    def flops_per_token(cfg, seq_len: int, convention: str) -> float:
        """Projections plus ``QK^T`` and ``PV`` over the keys in the window ("exact"),
        or over all ``T`` keys, as the masked dense program below computes ("compiled")."""
        w = int(cfg.attention.swa.window)
        keys = float(seq_len) if convention == "compiled" else float(
            np.minimum(np.arange(seq_len) + 1, w).mean())
        return qkvo_flops(cfg) + 4.0 * cfg.head_dim * cfg.n_heads * keys

    def __init__(self, cfg, layer_idx: int, *, rngs):
        super().__init__(cfg, layer_idx, rngs=rngs)
        self.window = int(cfg.attention.swa.window)
        if self.window < 1:
            raise ValueError(f"model.attention.swa.window={self.window} must be >= 1")

    def attend(self, q, k, v):
        t = q.shape[1]
        pos = jnp.arange(t)
        mask = window_mask(pos, pos, self.window)[None, None, :, :]          # [1, 1, T, T]
        return jax.nn.dot_product_attention(q, k, v, mask=mask)

    def cached_mask(self, q_BSHD, k_BLKD, q_pos_S, kv_len):
        """Decoding: the same window over the key cache (QKVOAttention.step does the rest)."""
        mask = window_mask(q_pos_S, jnp.arange(k_BLKD.shape[1]), self.window)   # [S, L]
        b, s, h, _ = q_BSHD.shape
        return jnp.broadcast_to(mask[None, :, None, :], (b, s, h, k_BLKD.shape[1]))
