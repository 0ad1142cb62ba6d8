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
