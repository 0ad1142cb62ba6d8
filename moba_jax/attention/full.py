"""Full causal grouped-query attention (the baseline arm).

``implementation`` (``cfg.attention.full.implementation``):

- ``"reference"``: plain ``jnp`` softmax attention over all ``T^2`` pairs with a
  causal mask; grouped-query heads are handled by reshaping queries to
  ``[B, T, Hkv, G, D]`` so keys/values are never repeated.
- ``"xla"``: ``jax.nn.dot_product_attention(is_causal=True)`` which picks the
  best backend path (the default).
- ``"cudnn"``: the same call with ``implementation="cudnn"`` (GPU only).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moba_jax import layers
from moba_jax.attention.registry import register_attention
from moba_jax.sharding import constrain

IMPLEMENTATIONS = ("reference", "xla", "cudnn")


def causal_attention_reference(q_BTHD, k_BTKD, v_BTKD, *, scale=None):
    """Dense causal GQA softmax attention in float32 (the oracle)."""
    b, t, hq, d = q_BTHD.shape
    hkv = k_BTKD.shape[2]
    g = hq // hkv
    scale = d ** -0.5 if scale is None else scale
    q = q_BTHD.astype(jnp.float32).reshape(b, t, hkv, g, d)
    s = jnp.einsum("btkgd,bskd->bkgts", q, k_BTKD.astype(jnp.float32)) * scale
    mask = jnp.tril(jnp.ones((t, t), dtype=bool))
    s = jnp.where(mask, s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bkgts,bskd->btkgd", p, v_BTKD.astype(jnp.float32))
    return o.reshape(b, t, hq, d).astype(q_BTHD.dtype)


def causal_attention(q, k, v, *, implementation: str = "xla", scale=None):
    if implementation == "reference":
        return causal_attention_reference(q, k, v, scale=scale)
    if implementation in ("xla", "cudnn"):
        return jax.nn.dot_product_attention(
            q, k, v, is_causal=True, scale=scale,
            implementation=None if implementation == "xla" else "cudnn")
    raise ValueError(f"attention.full.implementation: unknown {implementation!r}; "
                     f"choose one of {IMPLEMENTATIONS}")


class QKVOAttention(nnx.Module):
    """Shared projections for softmax attentions: ``W_q``, ``W_k``, ``W_v``, ``W_o``.

    Subclasses implement :meth:`attend` on the projected ``q, k, v``.
    """

    def __init__(self, cfg, layer_idx: int, *, rngs: nnx.Rngs):
        d, hq, hkv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        dtype = jnp.dtype(cfg.dtype)
        kw = dict(rngs=rngs, dtype=dtype)
        self.wq = layers.Dense(d, (hq, hd), in_axes=("embed",), out_axes=("q_heads", "head_dim"), **kw)
        self.wk = layers.Dense(d, (hkv, hd), in_axes=("embed",), out_axes=("kv_heads", "head_dim"), **kw)
        self.wv = layers.Dense(d, (hkv, hd), in_axes=("embed",), out_axes=("kv_heads", "head_dim"), **kw)
        self.wo = layers.Dense((hq, hd), d, in_axes=("q_heads", "head_dim"), out_axes=("embed",),
                               init_scale=(2 * cfg.n_layers) ** -0.5, **kw)
        opts = cfg.attention.get(self.kind, None)
        self.use_rope = bool(opts.get("rope", True)) if opts is not None else True
        self.rope_theta = float(cfg.rope_theta)

    def attend(self, q, k, v):
        raise NotImplementedError

    def __call__(self, x_BTD, positions_BT):
        q = constrain(self.wq(x_BTD), ("batch", "seq", "q_heads", "head_dim"))
        k = constrain(self.wk(x_BTD), ("batch", "seq", "kv_heads", "head_dim"))
        v = constrain(self.wv(x_BTD), ("batch", "seq", "kv_heads", "head_dim"))
        if self.use_rope:
            q = layers.rotary(q, positions_BT, self.rope_theta)
            k = layers.rotary(k, positions_BT, self.rope_theta)
        o = self.attend(q, k, v)
        return self.wo(constrain(o, ("batch", "seq", "q_heads", "head_dim")))


@register_attention("full")
class FullAttention(QKVOAttention):
    """Causal softmax attention over every earlier position."""

    @staticmethod
    def default_options() -> dict:
        return dict(implementation="xla", rope=True)

    def __init__(self, cfg, layer_idx: int, *, rngs: nnx.Rngs):
        super().__init__(cfg, layer_idx, rngs=rngs)
        self.implementation = cfg.attention.full.implementation
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"attention.full.implementation: unknown {self.implementation!r}; "
                             f"choose one of {IMPLEMENTATIONS}")

    def attend(self, q, k, v):
        return causal_attention(q, k, v, implementation=self.implementation)
