"""MoBA attention (Mixture of Block Attention) as a model layer.

Same projections as full attention (``W_q, W_k, W_v, W_o``, rotary by default);
the attention itself is :func:`kernels.moba.moba_attention`: keys cut into blocks
of ``block_size``, each query attends causally within its current block plus the
``top_k - 1`` past blocks whose mean-pooled keys score highest against it.

Options (``cfg.attention.moba``): ``block_size``, ``top_k``, ``implementation``
(``"xla"`` default, ``"pallas"``, ``"reference"``), ``rope``.

Because a MoBA layer has exactly the parameters of a full-attention layer, the
two hybrids of the MoBA paper are config switches: the last N layers full
(``model.full_attention_last_n``) and, during training, every MoBA layer
switched to full attention for the last part of the run
(``train.switch_to_full_at``, e.g. 0.9 for the 90%/10% recipe).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kernels.moba import IMPLEMENTATIONS, moba_attention
from moba_jax.attention.full import QKVOAttention
from moba_jax.attention.registry import register_attention


@register_attention("moba")
class MoBAAttention(QKVOAttention):

    @staticmethod
    def default_options() -> dict:
        return dict(block_size=64, top_k=3, implementation="xla", rope=True)

    def __init__(self, cfg, layer_idx: int, *, rngs: nnx.Rngs):
        super().__init__(cfg, layer_idx, rngs=rngs)
        opts = cfg.attention.moba
        self.block_size = int(opts.block_size)
        self.top_k = int(opts.top_k)
        self.implementation = str(opts.implementation)
        if self.block_size <= 0:
            raise ValueError(f"model.attention.moba.block_size={self.block_size} must be positive")
        if self.top_k <= 0:
            raise ValueError(f"model.attention.moba.top_k={self.top_k} must be positive "
                             "(it counts the current block)")
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"model.attention.moba.implementation={self.implementation!r}: "
                             f"choose one of {IMPLEMENTATIONS}")

    def attend(self, q, k, v):
        return moba_attention(q, k, v, block_size=self.block_size, top_k=self.top_k,
                              implementation=self.implementation)

    def cached_mask(self, q_BSHD, k_BLKD, q_pos_S, kv_len):
        """Exact MoBA selection for new queries against cached keys.

        A query at position t gates the pooled keys of its complete past blocks
        (``i < t // Bs``; these are fully written in the cache), keeps the best
        ``top_k - 1`` (ties toward the lower block) plus its current block,
        causally. This reproduces the training-time forward pass exactly, so
        decoding logits equal those of a full forward pass.
        """
        b, s_len, hq, d = q_BSHD.shape
        max_len, hkv = k_BLKD.shape[1], k_BLKD.shape[2]
        bs = self.block_size
        n = -(-max_len // bs)
        k = jnp.pad(k_BLKD.astype(jnp.float32), ((0, 0), (0, n * bs - max_len), (0, 0), (0, 0)))
        kbar = k.reshape(b, n, bs, hkv, d).mean(axis=2)                         # [B, N, K, D]
        qg = q_BSHD.astype(jnp.float32).reshape(b, s_len, hkv, hq // hkv, d)
        gate = jnp.einsum("bskgd,bnkd->bskgn", qg, kbar,
                          precision=jax.lax.Precision.HIGHEST).reshape(b, s_len, hq, n)
        blk = jnp.arange(n)
        current = (q_pos_S // bs)[:, None]                                       # [S, 1]
        past = (blk[None, :] < current)[None, :, None, :]                        # [1, S, 1, N]
        g_i, g_j = gate[..., :, None], gate[..., None, :]
        beats = (g_j > g_i) | ((g_j == g_i) & (blk[None, :] < blk[:, None]))
        rank = (beats & past[..., None, :]).sum(-1)
        chosen = (past & (rank < self.top_k - 1)) | (blk[None, :] == current)[None, :, None, :]
        key_pos = jnp.arange(max_len)
        allowed = jnp.take(chosen, key_pos // bs, axis=-1)                      # [B, S, H, L]
        return allowed & (key_pos[None, :] <= q_pos_S[:, None])[None, :, None, :]
