"""Layers configured for a Pallas kernel that cannot take their shapes fall back to the
exact xla path with one warning naming the reason; the ops still raise when named."""
from __future__ import annotations

import logging

import jax.numpy as jnp
import pytest
from flax import nnx

from configs.lm import base_config
from kernels.moba import moba_attention
from moba_jax.attention import fallback
from moba_jax.model import TransformerLM


def _model(head_dim):
    c = base_config()
    c.model.update(dict(d_model=2 * head_dim, n_heads=2, n_kv_heads=2, head_dim=head_dim,
                        mlp_dim=64, n_layers=4, attention_pattern="moba,kda"))
    c.model.attention.moba.implementation = "pallas"
    c.model.attention.moba.block_size = 32
    c.model.attention.kda.implementation = "pallas"
    return TransformerLM(c.model, rngs=nnx.Rngs(0))


def test_unsupported_head_dim_falls_back_once_with_the_reason(caplog):
    fallback._warned.clear()
    with caplog.at_level(logging.WARNING, logger="moba_jax"):
        m = _model(24)
    assert [b.attn.implementation for b in m.blocks] == ["xla"] * 4
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2   # one per kind and reason, not one per layer
    moba, kda = sorted(warnings, key=lambda w: "kda" in w)
    assert "model.attention.moba.implementation='pallas' falls back to 'xla'" in moba
    assert "head_dim=24 must be a power of two" in moba
    assert "model.attention.kda.implementation='pallas' falls back to 'xla'" in kda
    assert "=24" in kda


def test_supported_head_dim_keeps_the_kernel(caplog):
    fallback._warned.clear()
    with caplog.at_level(logging.WARNING, logger="moba_jax"):
        m = _model(16)
    assert [b.attn.implementation for b in m.blocks] == ["pallas"] * 4
    assert not caplog.records


def test_the_op_named_directly_still_raises():
    x = jnp.zeros((1, 64, 1, 24), jnp.float32)
    with pytest.raises(ValueError, match="head_dim=24 must be a power of two"):
        moba_attention(x, x, x, block_size=32, top_k=2, implementation="pallas_gpu",
                       interpret=True)
