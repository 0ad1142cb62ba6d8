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

import jax.numpy as jnp
import numpy as np
from flax import nnx

from kernels.moba import (IMPLEMENTATIONS, moba_attention, scored_pairs_per_token,
                          unsupported_reason)
from kernels.moba.blocked import scored_pairs_per_token as blocked_pairs_per_token
from kernels.moba.cost import elementwise_per_token as moba_elementwise
from kernels.moba.reference import selected_block_mask
from moba_jax.attention import fallback
from moba_jax.attention.full import QKVOAttention, qkvo_elementwise, qkvo_flops
from moba_jax.attention.registry import register_attention
from moba_jax.checks import ConfigError, one_of, positive


def moba_keys_per_token(seq_len: int, block_size: int, top_k: int) -> tuple[float, float]:
    """Exact mean over positions of (attended keys, past blocks gated) per query.

    Token ``t`` attends the ``t mod Bs + 1`` causal keys of its current block plus
    ``Bs`` keys for each of ``min(top_k - 1, c(t))`` selected past blocks, and its
    gate scores all ``c(t) = t // Bs`` past blocks.
    """
    t = np.arange(seq_len)
    c = t // block_size
    keys = (t % block_size + 1) + np.minimum(top_k - 1, c) * block_size
    return float(keys.mean()), float(c.mean())


def _compiled_matmuls(cfg, seq_len: int) -> tuple[float, float]:
    """Compiled per-token matmul FLOPs: ``(projections and attention, routing)``."""
    o = cfg.attention.moba
    bs, k = int(o.block_size), int(o.top_k)
    hd, hq, hkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
    routing = 2.0 * hd * hq * -(-seq_len // bs) + hd * hkv
    if o.implementation == "reference":
        return qkvo_flops(cfg) + 4.0 * hd * hq * seq_len, routing
    if o.implementation == "blocked":
        pairs = blocked_pairs_per_token(seq_len, hq, hkv, bs, k)
        return qkvo_flops(cfg) + 4.0 * hd * pairs, routing
    pairs = scored_pairs_per_token(seq_len, hq, hkv, hd, bs, k)
    return qkvo_flops(cfg) + 4.0 * hd * pairs, routing


def _compiled_elementwise(cfg, seq_len: int) -> tuple[float, float]:
    """Compiled per-token element-wise FLOPs ``(forward, train)``: the op's and the
    rotary and projections' around it."""
    o = cfg.attention.moba
    fwd, bwd = moba_elementwise(seq_len, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim,
                                int(o.block_size), int(o.top_k), str(o.implementation))
    around = qkvo_elementwise(cfg, bool(o.get("rope", True)))
    return fwd + around[0], fwd + bwd + around[1]


@register_attention("moba")
class MoBAAttention(QKVOAttention):

    display_name = "MoBA"
    colour_family = "Reds"
    switch_target = "full"      # same parameters: the paper's MoBA-then-full recipe

    @staticmethod
    def default_options() -> dict:
        return dict(block_size=64, top_k=3, implementation="xla", rope=True)

    @staticmethod
    def check_options(cfg) -> None:
        """Raises :class:`~moba_jax.checks.ConfigError` for options MoBA cannot take."""
        o, at = cfg.attention.moba, "model.attention.moba"
        positive(f"{at}.block_size", o.block_size, f"give the key block length, e.g. "
                 f"--config.{at}.block_size=64", integer=True)
        positive(f"{at}.top_k", o.top_k, f"give the blocks each query attends, counting its "
                 f"own, e.g. --config.{at}.top_k=3", integer=True)
        one_of(f"{at}.implementation", str(o.implementation), IMPLEMENTATIONS)
        if not isinstance(o.get("rope", True), bool):
            raise ConfigError(f"{at}.rope", f"{o.rope!r} is not a bool", "give True or False")

    @staticmethod
    def flops_per_token(cfg, seq_len: int, convention: str) -> float:
        """"exact": the keys each query attends (current block causally plus the chosen
        past blocks), its gate over every past block's pooled key, and the pooling.
        "compiled": every path scores each query against every block's pooled key
        (then masks the non-past ones); the reference scores all ``T`` keys, the sparse
        paths the tiles of their work list (:func:`kernels.moba.scored_pairs_per_token`,
        :func:`kernels.moba.blocked.scored_pairs_per_token`);
        plus the element-wise work of the op (:func:`kernels.moba.cost.elementwise_per_token`),
        the rotary embedding and the projections'."""
        o = cfg.attention.moba
        bs, k = int(o.block_size), int(o.top_k)
        hd, hq, hkv = cfg.head_dim, cfg.n_heads, cfg.n_kv_heads
        if convention == "exact":
            keys, gated = moba_keys_per_token(seq_len, bs, k)
            pooling = hd * hkv                # one add per key element into its block mean
            return qkvo_flops(cfg) + 4.0 * hd * hq * keys + 2.0 * hd * hq * gated + pooling
        attend, routing = _compiled_matmuls(cfg, seq_len)
        fwd, _ = _compiled_elementwise(cfg, seq_len)
        return attend + routing + fwd

    @staticmethod
    def train_flops_per_token(cfg, seq_len: int, convention: str) -> float:
        """3 x forward, but in "compiled": the projections and attention products 3 x,
        the routing (gate product, pooling, block choice) once, since no gradient flows
        through it, and the element-wise forward plus its backward."""
        if convention != "compiled":
            return 3.0 * MoBAAttention.flops_per_token(cfg, seq_len, convention)
        attend, routing = _compiled_matmuls(cfg, seq_len)
        _, train = _compiled_elementwise(cfg, seq_len)
        return 3.0 * attend + routing + train

    def __init__(self, cfg, layer_idx: int, *, rngs: nnx.Rngs):
        super().__init__(cfg, layer_idx, rngs=rngs)
        opts = cfg.attention.moba
        self.block_size = int(opts.block_size)
        self.top_k = int(opts.top_k)
        MoBAAttention.check_options(cfg)
        self.implementation = fallback.resolve(
            "model.attention.moba.implementation", str(opts.implementation),
            unsupported_reason(cfg.head_dim, self.block_size,
                               implementation=str(opts.implementation)))

    def attend(self, q, k, v):
        return moba_attention(q, k, v, block_size=self.block_size, top_k=self.top_k,
                              implementation=self.implementation)

    def cached_mask(self, q_BSHD, k_BLKD, q_pos_S, kv_len):
        """Exact MoBA selection for new queries against cached keys.

        The reference's rank test (:func:`kernels.moba.reference.selected_block_mask`)
        at the new queries' positions: only complete past blocks are gated, and these
        are fully written in the cache, so decoding logits equal those of a full
        forward pass.
        """
        blocks_BSHN = selected_block_mask(q_BSHD, k_BLKD, block_size=self.block_size,
                                          top_k=self.top_k, q_positions_S=q_pos_S)
        key_pos = jnp.arange(k_BLKD.shape[1])
        allowed = jnp.take(blocks_BSHN, key_pos // self.block_size, axis=-1)     # [B, S, H, L]
        return allowed & (key_pos[None, :] <= q_pos_S[:, None])[None, :, None, :]
