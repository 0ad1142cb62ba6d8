"""MLA (multi-head latent attention): explicit expansion, positions, cache size (the Kimi
Linear paper config: tests/test_kimi_paper_config.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moba_jax.attention.mla import mla_cache_per_token
from moba_jax import layers
from moba_jax.attention.mla import MLAttention
from moba_jax.model import default_model_config


def mla_cfg(rope=True, q_latent_dim=0, impl="xla", kv_latent_dim=24, rope_dim=8, **kw):
    cfg = default_model_config()
    cfg.update(d_model=32, n_layers=2, n_heads=3, n_kv_heads=1, head_dim=8, mlp_dim=64,
               attention_pattern="mla")
    cfg.attention.mla.update(kv_latent_dim=kv_latent_dim, rope_dim=rope_dim,
                             q_latent_dim=q_latent_dim, rope=rope, implementation=impl)
    cfg.update(kw)
    return cfg


def rms(x, scale, eps):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + eps) * scale


def explicit_mla(layer, cfg, x_TD, positions_T):
    """Per-head keys/values expanded from the latent, then plain causal softmax (numpy)."""
    w = lambda m: np.asarray(m.kernel[...], np.float64)
    x = np.asarray(x_TD, np.float64)
    hd, dr = cfg.head_dim, cfg.attention.mla.rope_dim
    if cfg.attention.mla.q_latent_dim:
        c_q = rms(x @ w(layer.wq_down), np.asarray(layer.q_norm.scale[...]), cfg.norm_eps)
        q = np.einsum("tc,che->the", c_q, w(layer.wq_up))
    else:
        q = np.einsum("td,dhe->the", x, w(layer.wq))
    c_kv = rms(x @ w(layer.wkv_down), np.asarray(layer.kv_norm.scale[...]), cfg.norm_eps)
    k_rope = x @ w(layer.wk_rope)                                   # [T, d_r], shared
    q_nope, q_rope = q[..., :hd], q[..., hd:]
    if cfg.attention.mla.rope:
        pos = jnp.asarray(positions_T)[None]
        q_rope = np.asarray(layers.rotary(jnp.asarray(q_rope, jnp.float32)[None], pos,
                                          cfg.rope_theta)[0], np.float64)
        k_rope = np.asarray(layers.rotary(jnp.asarray(k_rope, jnp.float32)[None, :, None], pos,
                                          cfg.rope_theta)[0, :, 0], np.float64)
    t = x.shape[0]
    out = np.zeros((t, cfg.d_model))
    for h in range(cfg.n_heads):
        k_h = c_kv @ w(layer.wk_up)[:, h]                           # [T, d_h]
        v_h = c_kv @ w(layer.wv_up)[:, h]
        s = (q_nope[:, h] @ k_h.T + q_rope[:, h] @ k_rope.T) / np.sqrt(hd + dr)
        s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        out += (p @ v_h) @ w(layer.wo)[h]
    return out


@pytest.mark.parametrize("impl", ["xla", "reference"])
@pytest.mark.parametrize("rope,q_latent_dim", [(True, 0), (False, 0), (True, 16)])
def test_mla_equals_explicit_expansion(impl, rope, q_latent_dim):
    cfg = mla_cfg(rope=rope, q_latent_dim=q_latent_dim, impl=impl)
    layer = MLAttention(cfg, 0, rngs=nnx.Rngs(0))
    T = 11
    x = jax.random.normal(jax.random.key(1), (2, T, cfg.d_model))
    pos = jnp.broadcast_to(jnp.arange(T) + 3, (2, T))
    y = np.asarray(layer(x, pos))
    for b in range(2):
        np.testing.assert_allclose(y[b], explicit_mla(layer, cfg, x[b], pos[b]),
                                   rtol=1e-4, atol=1e-5)


def test_nope_ignores_positions_and_rope_is_relative():
    T = 9
    x = jax.random.normal(jax.random.key(1), (1, T, 32))
    pos = jnp.arange(T)[None]
    nope = MLAttention(mla_cfg(rope=False), 0, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(nope(x, pos), nope(x, pos * 7 + 100), atol=1e-6)
    rope = MLAttention(mla_cfg(rope=True), 0, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(rope(x, pos), rope(x, pos + 5), atol=2e-5)     # relative
    assert float(jnp.max(jnp.abs(rope(x, pos) - rope(x, pos * 2)))) > 1e-4


def test_cache_size_per_token():
    cfg = mla_cfg(kv_latent_dim=24, rope_dim=8)
    layer = MLAttention(cfg, 0, rngs=nnx.Rngs(0))
    assert layer.cache_size_per_token() == 24 + 8 == mla_cache_per_token(cfg)
    # Versus the 2 * H * d_h numbers per token that multi-head attention caches.
    assert layer.cache_size_per_token() < 2 * cfg.n_heads * cfg.head_dim


def test_bad_options_name_the_field():
    with pytest.raises(ValueError, match="attention.mla.rope_dim"):
        MLAttention(mla_cfg(rope_dim=7), 0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="attention.mla.rope: rope=True needs rope_dim"):
        MLAttention(mla_cfg(rope_dim=0), 0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="attention.mla.implementation"):
        MLAttention(mla_cfg(impl="flash"), 0, rngs=nnx.Rngs(0))

