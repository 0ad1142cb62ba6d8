"""The attention inputs every implementation of the device check is timed on.

One seeded draw per shape (``jax.random``, threefry: the same bits on every backend), so
that the JAX paths and the PyTorch anchors (FLA) read the same bytes: ``q, k, v`` in
bfloat16 (q and k L2-normalised per head, as KDA requires; the softmax paths take them as
they are), ``g`` the KDA log-decay per key channel in float32, ``g = -0.5 sigmoid(x - 2)``
in ``(-0.5, 0)`` (mean about -0.07: a forget rate of about 7% per token), and
``beta = sigmoid(y)`` in float32. Layout ``[B, T, H, D]`` (``beta: [B, T, H]``).

The ``inputs`` job draws every length once, on the device, and caches the arrays as
``.npy`` files (bfloat16 stored as its uint16 bit pattern) under a cache folder outside
the output folder; every later job, JAX or PyTorch, memory-maps them with :func:`load`.
"""
from __future__ import annotations

import os
import shutil

import numpy as np

NAMES = ("q", "k", "v", "g", "beta")
L2_EPS = 1e-6   # kernels.kda.l2_normalize's epsilon


def draw(batch: int, seq_len: int, heads: int, head_dim: int, seed: int = 0) -> dict:
    """``{q, k, v: uint16 bfloat16 bits [B,T,H,D]; g: float32 [B,T,H,D]; beta: float32
    [B,T,H]}`` as NumPy arrays, drawn with ``jax.random.key(seed)``."""
    import jax
    import jax.numpy as jnp

    shape = (batch, seq_len, heads, head_dim)
    kq, kk, kv, kg, kb = jax.random.split(jax.random.key(seed), 5)

    @jax.jit
    def make():
        def unit(key):
            x = jax.random.normal(key, shape, jnp.float32)
            return x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + L2_EPS)

        bits = lambda x: jax.lax.bitcast_convert_type(x.astype(jnp.bfloat16), jnp.uint16)
        return dict(q=bits(unit(kq)), k=bits(unit(kk)),
                    v=bits(jax.random.normal(kv, shape, jnp.float32)),
                    g=-0.5 * jax.nn.sigmoid(jax.random.normal(kg, shape, jnp.float32) - 2.0),
                    beta=jax.nn.sigmoid(jax.random.normal(kb, shape[:3], jnp.float32)))

    return {n: np.asarray(a) for n, a in make().items()}


def folder(cache_dir: str, batch, seq_len, heads, head_dim, seed=0) -> str:
    return os.path.join(cache_dir, f"B{batch}_T{seq_len}_H{heads}_D{head_dim}_s{seed}")


def prepare(cache_dir: str, batch: int, seq_len: int, heads: int, head_dim: int,
            seed: int = 0) -> str:
    """Draws and caches one shape unless it is cached already; returns its folder."""
    dest = folder(cache_dir, batch, seq_len, heads, head_dim, seed)
    if os.path.exists(os.path.join(dest, "DONE")):
        return dest
    arrays = draw(batch, seq_len, heads, head_dim, seed)
    tmp = f"{dest}.tmp{os.getpid()}"
    os.makedirs(tmp, exist_ok=True)
    for name, a in arrays.items():
        np.save(os.path.join(tmp, f"{name}.npy"), a)
    open(os.path.join(tmp, "DONE"), "w").close()
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def load(cache_dir: str, batch: int, seq_len: int, heads: int, head_dim: int,
         seed: int = 0) -> dict:
    """The cached arrays of one shape, memory-mapped (see :func:`prepare`)."""
    src = folder(cache_dir, batch, seq_len, heads, head_dim, seed)
    if not os.path.exists(os.path.join(src, "DONE")):
        raise FileNotFoundError(
            f"no cached inputs for B={batch} T={seq_len} H={heads} D={head_dim} in "
            f"{cache_dir}: the device check's 'inputs' job draws them (run the attention "
            "section through python -m experiments.device_check)")
    return {n: np.load(os.path.join(src, f"{n}.npy"), mmap_mode="r") for n in NAMES}


def bf16_bits_to_f32(bits: np.ndarray) -> np.ndarray:
    """The float32 values of a bfloat16 bit pattern."""
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32)


def to_jax(arrays: dict, dtype=None) -> dict:
    """The arrays on JAX's default device: q, k, v as bfloat16 (or ``dtype``), g and beta
    float32."""
    import jax
    import jax.numpy as jnp

    out = {}
    for n in NAMES:
        a = jnp.asarray(np.asarray(arrays[n]))
        if n in ("q", "k", "v"):
            a = jax.lax.bitcast_convert_type(a, jnp.bfloat16)
            if dtype is not None:
                a = a.astype(dtype)
        out[n] = a
    return out
