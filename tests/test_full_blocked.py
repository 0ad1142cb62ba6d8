"""The "blocked" full-attention path equals the dense reference, values and gradients,
and its compiled FLOP count follows the key prefixes it really scores."""
import jax
import jax.numpy as jnp
import pytest

from moba_jax import accounting
from moba_jax.attention.full import causal_attention, compiled_keys_per_query
from moba_jax.model import default_model_config


@pytest.mark.parametrize("seq_len,query_block", [(256, 64), (300, 128), (64, 256)])
@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 2), (2, 2)])
def test_blocked_equals_reference(seq_len, query_block, n_heads, n_kv_heads):
    keys = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(keys[0], (2, seq_len, n_heads, 16))
    k = jax.random.normal(keys[1], (2, seq_len, n_kv_heads, 16))
    v = jax.random.normal(keys[2], (2, seq_len, n_kv_heads, 16))
    w = jax.random.normal(keys[3], (2, seq_len, n_heads, 16))

    def loss(impl):
        return lambda q, k, v: jnp.sum(w * causal_attention(q, k, v, implementation=impl,
                                                            query_block=query_block))
    ref, blk = loss("reference"), loss("blocked")
    # Compiled, as in training (eager op-by-op dispatch made this test ~3x slower).
    grad = lambda f: jax.jit(jax.grad(f, (0, 1, 2)))
    assert jnp.allclose(jax.jit(blk)(q, k, v), jax.jit(ref)(q, k, v), rtol=1e-5)
    for g_blk, g_ref in zip(grad(blk)(q, k, v), grad(ref)(q, k, v)):
        assert jnp.allclose(g_blk, g_ref, rtol=1e-4, atol=1e-5)


def test_blocked_compiled_keys():
    cfg = default_model_config()
    cfg.attention.full.update(implementation="blocked", query_block=256)
    # 4 blocks of 256 queries score 256, 512, 768, 1024 keys: mean 640 = T (n+1) / 2n.
    assert compiled_keys_per_query(cfg.attention.full, 1024) == 640
    dense = default_model_config()
    saved = (accounting.forward_flops_per_token(dense, 1024, "compiled")["attention"]
             - accounting.forward_flops_per_token(cfg, 1024, "compiled")["attention"])
    # At least the two score matmuls' share of the 384 keys per query it skips.
    assert saved >= cfg.n_layers * 4.0 * cfg.head_dim * cfg.n_heads * (1024 - 640)


def test_mla_blocked_equals_reference_with_wider_keys():
    from moba_jax.attention.mla import latent_attention
    keys = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(keys[0], (2, 200, 3, 24))     # keys 24 wide (16 + 8 rope), values 16
    k = jax.random.normal(keys[1], (2, 200, 3, 24))
    v = jax.random.normal(keys[2], (2, 200, 3, 16))
    ref = latent_attention(q, k, v, scale=0.2, implementation="reference")
    blk = latent_attention(q, k, v, scale=0.2, implementation="blocked", query_block=64)
    assert blk.shape == ref.shape
    assert jnp.allclose(blk, ref, rtol=1e-5, atol=1e-6)
