"""Exact causal GQA attention in query blocks over key prefixes, with a flash-style VJP.

``q [B, T, Hq, E]``, ``k [B, T, Hkv, E]``, ``v [B, T, Hkv, D]`` (keys may be wider than
values, as in MLA); query head ``h`` reads key head ``h // (Hq // Hkv)``. Queries go
in blocks of ``query_block``; block ``i`` scores only keys ``0 .. (i+1) * query_block
- 1``, so the fully masked upper blocks are never computed (for ``n`` blocks,
``(n + 1) / 2n`` of the dense work). The ``G = Hq / Hkv`` query heads of a key head
are stacked as rows of one ``[G * block, keys]`` tile, so every matmul is a plain
batched ``[rows, E] x [E, keys]`` product with contiguous operands.

Backward (``jax.custom_vjp``): the forward keeps only ``o`` and the float32
log-sum-exp per row; the backward recomputes each block's probabilities from them
and uses ``delta = rowsum(dO * O)`` (a reduction over ``D``, not over the keys), as
FlashAttention does. Letting autodiff differentiate the softmax instead costs a
``[rows, keys]`` reduction per block, which on CPU took about a fifth of the whole
training step of the replication's largest model (profile in the issue #14 note).
Float32 accumulation throughout; the result is cast to ``v``'s dtype.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_F32 = jnp.float32
# Query rows per block: on a 2-core CPU at T=1024 (4 x 1024 tokens, 2 query heads of 32,
# forward+backward of one layer) 64 and 128 took 75 and 81 ms, 256 and 512 102 and
# 129 ms (cache-sized tiles); smaller blocks unroll more code, so 128.
DEFAULT_QUERY_BLOCK = 128


def blocked_key_counts(seq_len: int, query_block: int) -> list[tuple[int, int]]:
    """``(queries, keys)`` per query block: block ``i`` holds ``min(query_block,
    T - i * query_block)`` queries and scores the keys up to its end."""
    return [(min(query_block, seq_len - i), min(i + query_block, seq_len))
            for i in range(0, seq_len, query_block)]


def _heads_first(q_BTHE, k_BTKE, v_BTKD, scale):
    """``q -> [B, Hkv, G, T, E]`` (pre-scaled, float32), ``k, v -> [B, Hkv, T, .]``."""
    b, t, hq, e = q_BTHE.shape
    hkv = k_BTKE.shape[2]
    q = (q_BTHE.astype(_F32) * scale).reshape(b, t, hkv, hq // hkv, e).transpose(0, 2, 3, 1, 4)
    return q, k_BTKE.astype(_F32).transpose(0, 2, 1, 3), v_BTKD.astype(_F32).transpose(0, 2, 1, 3)


def _block_rows(x_BKGTX, start, n_q):
    """Rows ``start .. start+n_q`` of every grouped head as one ``[B, Hkv, G*n_q, X]`` tile."""
    b, hkv, g, _, x = x_BKGTX.shape
    return x_BKGTX[:, :, :, start:start + n_q].reshape(b, hkv, g * n_q, x)


def _visible(start, n_q, n_k, g):
    """``[G*n_q, n_k]`` causal mask of one block's stacked rows."""
    causal = jnp.arange(n_k)[None, :] <= start + jnp.arange(n_q)[:, None]
    return jnp.tile(causal, (g, 1))


def _forward(q_BTHE, k_BTKE, v_BTKD, query_block, scale):
    b, t, hq, _ = q_BTHE.shape
    hkv = k_BTKE.shape[2]
    g = hq // hkv
    q, k, v = _heads_first(q_BTHE, k_BTKE, v_BTKD, scale)
    outs, lses = [], []
    for start, (n_q, n_k) in zip(range(0, t, query_block), blocked_key_counts(t, query_block)):
        s = jnp.einsum("bkre,bkle->bkrl", _block_rows(q, start, n_q), k[:, :, :n_k])
        s = jnp.where(_visible(start, n_q, n_k, g), s, -jnp.inf)
        m = s.max(axis=-1, keepdims=True)             # finite: every row sees key 0
        p = jnp.exp(s - m)
        l = p.sum(axis=-1, keepdims=True)
        o = jnp.einsum("bkrl,bkld->bkrd", p, v[:, :, :n_k]) / l
        outs.append(o.reshape(b, hkv, g, n_q, -1))
        lses.append((m + jnp.log(l))[..., 0].reshape(b, hkv, g, n_q))
    o_BKGTD = jnp.concatenate(outs, axis=3)
    lse_BKGT = jnp.concatenate(lses, axis=3)
    return o_BKGTD, lse_BKGT


def _to_bthd(o_BKGTD, dtype):
    b, hkv, g, t, d = o_BKGTD.shape
    return o_BKGTD.transpose(0, 3, 1, 2, 4).reshape(b, t, hkv * g, d).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _blocked(q, k, v, query_block, scale):
    return _to_bthd(_forward(q, k, v, query_block, scale)[0], v.dtype)


def _blocked_fwd(q, k, v, query_block, scale):
    o, lse = _forward(q, k, v, query_block, scale)
    return _to_bthd(o, v.dtype), (q, k, v, o, lse)


def _blocked_bwd(query_block, scale, res, do_BTHD):
    q_in, k_in, v_in, o, lse = res
    b, t, hq, e = q_in.shape
    hkv = k_in.shape[2]
    g = hq // hkv
    q, k, v = _heads_first(q_in, k_in, v_in, scale)
    do = do_BTHD.astype(_F32).reshape(b, t, hkv, g, -1).transpose(0, 2, 3, 1, 4)
    delta = jnp.sum(do * o, axis=-1)                    # [B, Hkv, G, T]
    dq_blocks = []
    dk, dv = jnp.zeros_like(k), jnp.zeros_like(v)
    for start, (n_q, n_k) in zip(range(0, t, query_block), blocked_key_counts(t, query_block)):
        q_r, do_r = _block_rows(q, start, n_q), _block_rows(do, start, n_q)
        lse_r = _block_rows(lse[..., None], start, n_q)
        delta_r = _block_rows(delta[..., None], start, n_q)
        k_p, v_p = k[:, :, :n_k], v[:, :, :n_k]
        s = jnp.einsum("bkre,bkle->bkrl", q_r, k_p)
        p = jnp.where(_visible(start, n_q, n_k, g), jnp.exp(s - lse_r), 0.0)
        dp = jnp.einsum("bkrd,bkld->bkrl", do_r, v_p)
        ds = p * (dp - delta_r)
        pad = [(0, 0), (0, 0), (0, t - n_k), (0, 0)]
        dv = dv + jnp.pad(jnp.einsum("bkrl,bkrd->bkld", p, do_r), pad)
        dk = dk + jnp.pad(jnp.einsum("bkrl,bkre->bkle", ds, q_r), pad)
        dq_blocks.append(jnp.einsum("bkrl,bkle->bkre", ds, k_p).reshape(b, hkv, g, n_q, e))
    dq = jnp.concatenate(dq_blocks, axis=3) * scale
    dq = dq.transpose(0, 3, 1, 2, 4).reshape(b, t, hq, e).astype(q_in.dtype)
    dk = dk.transpose(0, 2, 1, 3).astype(k_in.dtype)
    dv = dv.transpose(0, 2, 1, 3).astype(v_in.dtype)
    return dq, dk, dv


_blocked.defvjp(_blocked_fwd, _blocked_bwd)


def blocked_attention(q_BTHE, k_BTKE, v_BTKD, *, query_block: int = DEFAULT_QUERY_BLOCK, scale=None):
    """Exact causal attention in query blocks (module docstring); ``scale`` defaults to
    ``E ** -0.5``. Output ``[B, T, Hq, D]`` in ``v``'s dtype."""
    if q_BTHE.shape[2] % k_BTKE.shape[2]:
        raise ValueError(f"query heads ({q_BTHE.shape[2]}) must be a multiple of key heads "
                         f"({k_BTKE.shape[2]})")
    scale = float(q_BTHE.shape[-1] ** -0.5 if scale is None else scale)
    return _blocked(q_BTHE, k_BTKE, v_BTKD, int(query_block), scale)
