"""Basic Flax NNX layers with logical-axis metadata on every parameter.

Parameters are stored in float32; each layer casts weights and activations to
its ``dtype`` (the compute dtype, bfloat16 or float32) before the matmul.
Shapes are written in names where it helps: ``x_BTD`` is [batch, time, model].
"""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs, init, shape: Sequence[int], axes: Sequence[str | None],
          dtype=jnp.float32, **metadata) -> nnx.Param:
    """A float32 parameter tagged with its logical axis names (and any ``metadata``, e.g.
    a matmul weight's ``in_dims`` for Muon, see ``moba_jax/train/optim.py``)."""
    return nnx.Param(init(rngs.params(), tuple(shape), dtype), logical_axes=tuple(axes),
                     **metadata)


def fan_in_init(fan_in: int, scale: float = 1.0):
    """Truncated-normal init with std ``scale / sqrt(fan_in)``."""
    std = scale / (fan_in ** 0.5)
    def init(key, shape, dtype):
        return (std / 0.87962566) * jax.random.truncated_normal(key, -2.0, 2.0, shape, dtype)
    return init


class RMSNorm(nnx.Module):
    """Root-mean-square layer norm with a learned scale (computed in float32)."""

    def __init__(self, dim: int, *, eps: float = 1e-6, rngs: nnx.Rngs,
                 axes: tuple[str | None, ...] = ("norm",)):
        self.eps = eps
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), logical_axes=axes)

    def __call__(self, x):
        dtype = x.dtype
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (x32 * self.scale[...]).astype(dtype)


class Dense(nnx.Module):
    """``y = x @ W`` over the last ``len(in_shape)`` axes; no bias.

    ``W`` has shape ``in_shape + out_shape`` and logical axes ``in_axes + out_axes``.
    """

    def __init__(self, in_shape: int | Sequence[int], out_shape: int | Sequence[int], *,
                 in_axes: Sequence[str | None], out_axes: Sequence[str | None],
                 rngs: nnx.Rngs, dtype=jnp.float32, init_scale: float = 1.0):
        self.in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
        self.out_shape = (out_shape,) if isinstance(out_shape, int) else tuple(out_shape)
        fan_in = 1
        for s in self.in_shape:
            fan_in *= s
        self.kernel = param(rngs, fan_in_init(fan_in, init_scale),
                            self.in_shape + self.out_shape, tuple(in_axes) + tuple(out_axes),
                            in_dims=len(self.in_shape))
        self.dtype = dtype

    def __call__(self, x):
        n_in = len(self.in_shape)
        w = self.kernel[...].astype(self.dtype)
        return jnp.tensordot(x.astype(self.dtype), w, axes=(
            tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))))


class Embed(nnx.Module):
    """Token embedding table ``[vocab, d_model]``; ``attend`` gives tied logits."""

    def __init__(self, vocab: int, dim: int, *, rngs: nnx.Rngs, dtype=jnp.float32):
        self.embedding = param(rngs, fan_in_init(dim, 1.0), (vocab, dim), ("vocab", "embed"))
        self.dtype = dtype

    def __call__(self, tokens_BT):
        return jnp.take(self.embedding[...], tokens_BT, axis=0).astype(self.dtype)

    def attend(self, x_BTD):
        return jnp.einsum("btd,vd->btv", x_BTD, self.embedding[...].astype(self.dtype))


class SwiGLU(nnx.Module):
    """``W_down(silu(W_gate x) * W_up x)``."""

    def __init__(self, d_model: int, hidden: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 out_scale: float = 1.0):
        kw = dict(rngs=rngs, dtype=dtype)
        self.gate = Dense(d_model, hidden, in_axes=("embed",), out_axes=("mlp",), **kw)
        self.up = Dense(d_model, hidden, in_axes=("embed",), out_axes=("mlp",), **kw)
        self.down = Dense(hidden, d_model, in_axes=("mlp",), out_axes=("embed",),
                          init_scale=out_scale, **kw)

    def __call__(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


def rotary(x_BTHD: jax.Array, positions_BT: jax.Array, theta: float = 10000.0) -> jax.Array:
    """Rotary position embedding (rotate-half convention), computed in float32."""
    d = x_BTHD.shape[-1]
    if d % 2:
        raise ValueError(f"rotary positions need an even head_dim, got {d}")
    half = d // 2
    freq = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = positions_BT.astype(jnp.float32)[..., None] * freq          # [B, T, half]
    sin, cos = jnp.sin(angle)[:, :, None, :], jnp.cos(angle)[:, :, None, :]
    x = x_BTHD.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BTHD.dtype)
