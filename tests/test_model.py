"""Model structure: causality, parameter accounting, logical axes, dtypes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moba_jax import accounting
from moba_jax.model import TransformerLM, default_model_config, layer_kinds, param_counts
from moba_jax.train.state import model_spec


def small_cfg(**kw):
    cfg = default_model_config()
    cfg.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64)
    cfg.update(kw)
    return cfg


@pytest.mark.parametrize("impl", ["reference", "xla"])
@pytest.mark.parametrize("pattern", ["full", "moba"])
def test_causality(impl, pattern):
    """Logits at position t have zero gradient w.r.t. inputs after t (and non-zero before)."""
    cfg = small_cfg(attention_pattern=pattern)
    cfg.attention[pattern].implementation = impl
    cfg.attention.moba.update(block_size=4, top_k=2)   # several blocks in T = 12
    model = TransformerLM(cfg, rngs=nnx.Rngs(0))
    T = 12
    x = jax.random.normal(jax.random.key(1), (1, T, cfg.d_model))
    # One compiled gradient for every t (eager op-by-op dispatch is ~5x slower here).
    grad_at = jax.jit(lambda x, t: jax.grad(lambda x: model.forward_embeddings(x)[0, t].sum())(x))
    for t in (0, 5, T - 2):
        g = grad_at(x, t)
        per_pos = np.abs(np.asarray(g[0])).sum(-1)
        assert np.all(per_pos[t + 1:] == 0.0), f"position {t} sees the future: {per_pos}"
        assert np.all(per_pos[: t + 1] > 0.0), f"position {t} ignores its past: {per_pos}"


@pytest.mark.parametrize("tie", [True, False])
def test_param_accounting_matches_model(tie):
    cfg = small_cfg(tie_embeddings=tie)
    spec = model_spec(cfg)
    counts = param_counts(spec.param_shapes)
    assert counts["non_embedding"] == accounting.non_embedding_params(cfg)
    assert counts["embedding"] == accounting.embedding_params(cfg)


def test_reference_and_xla_attention_agree():
    cfg = small_cfg()
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 259)
    outs = []
    for impl in ("reference", "xla"):
        cfg.attention.full.implementation = impl
        outs.append(TransformerLM(cfg, rngs=nnx.Rngs(0))(tokens))
    np.testing.assert_allclose(outs[0], outs[1], rtol=2e-5, atol=2e-5)


def test_every_param_has_logical_axes_of_its_rank():
    spec = model_spec(small_cfg(tie_embeddings=False))
    shapes = jax.tree.leaves(spec.param_shapes)
    axes = jax.tree.leaves(spec.logical_axes, is_leaf=lambda x: isinstance(x, tuple))
    assert len(shapes) == len(axes)
    for s, a in zip(shapes, axes):
        assert len(a) == len(s.shape)


def test_bfloat16_compute_keeps_float32_params():
    cfg = small_cfg(dtype="bfloat16")
    model = TransformerLM(cfg, rngs=nnx.Rngs(0))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(l.dtype == jnp.float32 for l in leaves)
    logits = model(jnp.zeros((1, 8), jnp.int32))
    assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))


def test_pattern_and_layerwise_hybrid():
    cfg = small_cfg(n_layers=4, attention_pattern="full", full_attention_last_n=2)
    assert layer_kinds(cfg) == ["full"] * 4
