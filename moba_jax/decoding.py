"""Autoregressive decoding with per-layer caches.

Every attention kind implements ``init_cache(batch, max_len)`` and
``step(x_BSD, positions_BS, cache, start) -> (y_BSD, cache)``: softmax
attentions keep keys and values (MLA its compressed latent), MoBA applies its
exact block selection against the cached keys (so decoding equals the forward
pass), recurrent kinds keep their state. The prompt is processed in one
``step`` (prefill), then one token per step.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def init_caches(model, batch: int, max_len: int) -> list:
    return [blk.attn.init_cache(batch, max_len) for blk in model.blocks]


def model_step(model, tokens_BS, caches, start):
    """Logits ``[B, S, V]`` for S new tokens at positions ``start..start+S-1``."""
    b, s = tokens_BS.shape
    positions = jnp.broadcast_to(start + jnp.arange(s), (b, s))
    x = model.embed(tokens_BS)
    new = []
    for blk, cache in zip(model.blocks, caches):
        y, cache = blk.attn.step(blk.attn_norm(x), positions, cache, start)
        x = x + y
        x = x + blk.mlp(blk.mlp_norm(x))
        new.append(cache)
    x = model.final_norm(x)
    logits = model.embed.attend(x) if model.tie_embeddings else model.head(x)
    return logits.astype(jnp.float32), new


@functools.partial(jax.jit, static_argnums=(0,))
def _jit_step(graphdef, params, tokens, caches, start):
    return model_step(nnx.merge(graphdef, params), tokens, caches, start)


def incremental_logits(spec, params, tokens_BT, prefill: int = 1):
    """Logits for every position via prefill of ``prefill`` tokens then one-token steps.

    The decoding-parity tests compare this with a full forward pass.
    """
    b, t = tokens_BT.shape
    model = nnx.merge(spec.graphdef, params)
    caches = init_caches(model, b, t)
    out = []
    logits, caches = _jit_step(spec.graphdef, params, tokens_BT[:, :prefill], caches, 0)
    out.append(logits)
    for i in range(prefill, t):
        logits, caches = _jit_step(spec.graphdef, params, tokens_BT[:, i:i + 1], caches, i)
        out.append(logits)
    return jnp.concatenate(out, axis=1)


def generate(spec, params, prompt_BT, max_new_tokens: int, *, temperature: float = 0.0,
             seed: int = 0, eos_id: int | None = None):
    """Greedy (``temperature=0``) or sampled continuation of ``prompt_BT``; returns ``[B, new]``."""
    b, t = prompt_BT.shape
    model = nnx.merge(spec.graphdef, params)
    caches = init_caches(model, b, t + max_new_tokens)
    logits, caches = _jit_step(spec.graphdef, params, prompt_BT, caches, 0)
    key = jax.random.key(seed)
    out = []
    last = logits[:, -1]
    for i in range(max_new_tokens):
        if temperature > 0:
            key, sub = jax.random.split(key)
            nxt = jax.random.categorical(sub, last / temperature, axis=-1)
        else:
            nxt = jnp.argmax(last, axis=-1)
        nxt = nxt.astype(jnp.int32)
        out.append(nxt)
        if eos_id is not None and bool(jnp.all(nxt == eos_id)):
            break
        if i + 1 < max_new_tokens:
            logits, caches = _jit_step(spec.graphdef, params, nxt[:, None], caches, t + i)
            last = logits[:, -1]
    return jnp.stack(out, axis=1)
