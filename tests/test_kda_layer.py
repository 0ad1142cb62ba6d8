"""The KDA layer and the Kimi Linear hybrid inside the model."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from moba_jax.attention.kda import KDAttention
from moba_jax.model import ModelConfigError, TransformerLM, default_model_config, layer_kinds
from moba_jax.train.optim import decay_mask
from moba_jax.train.state import model_spec


def kda_cfg(impl="xla", chunk_size=16, **kw):
    cfg = default_model_config()
    cfg.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64,
               attention_pattern="kda")
    cfg.attention.kda.update(implementation=impl, chunk_size=chunk_size)
    cfg.attention.mla.update(kv_latent_dim=16, rope_dim=8, rope=False)
    cfg.update(kw)
    return cfg


# slow (~15 s on the 2-core CPU, compiling the layer's gradient): KDA causality across a
# chunk boundary with the last chunk padded is covered in CI by
# test_hybrid_model_is_causal[kda,mla] below (T = 20, chunks of 16).
@pytest.mark.slow
def test_kda_layer_is_causal():
    """T = 40 with chunks of 16: three chunks, the last one padded."""
    layer = KDAttention(kda_cfg(), 0, rngs=nnx.Rngs(0))
    T = 40
    x = jax.random.normal(jax.random.key(1), (1, T, 32))
    grad = jax.jit(jax.grad(lambda x, t: jnp.take(layer(x)[0], t, axis=0).sum()))
    for t in (0, 15, 16, 33, T - 1):
        g = grad(x, t)
        per_pos = np.abs(np.asarray(g[0])).sum(-1)
        assert np.all(per_pos[t + 1:] == 0.0), f"position {t} sees the future: {per_pos}"
        assert np.all(per_pos[: t + 1] > 0.0), f"position {t} ignores its past: {per_pos}"


def test_xla_layer_equals_reference_layer():
    x = jax.random.normal(jax.random.key(1), (2, 40, 32))
    ys = [KDAttention(kda_cfg(impl), 0, rngs=nnx.Rngs(3))(x) for impl in ("xla", "reference")]
    np.testing.assert_allclose(ys[0], ys[1], rtol=1e-4, atol=1e-5)


def test_decay_and_beta_ranges():
    layer = KDAttention(kda_cfg(), 0, rngs=nnx.Rngs(0))
    x = 3.0 * jax.random.normal(jax.random.key(2), (2, 24, 32))
    q, k, v, g, beta = layer.inputs(x)
    assert g.dtype == jnp.float32 and beta.dtype == jnp.float32
    assert bool(jnp.all(g <= 0)) and bool(jnp.all((beta > 0) & (beta < 1)))
    np.testing.assert_allclose(jnp.sum(q.astype(jnp.float32) ** 2, -1), 1.0, atol=1e-3)
    np.testing.assert_allclose(jnp.sum(k.astype(jnp.float32) ** 2, -1), 1.0, atol=1e-3)


def test_init_ranges():
    cfg = kda_cfg(n_heads=64, head_dim=16)
    layer = KDAttention(cfg, 0, rngs=nnx.Rngs(0))
    a_log = np.asarray(layer.A_log[...])
    dt = np.asarray(jax.nn.softplus(layer.dt_bias[...]))
    assert a_log.shape == (64,) and layer.dt_bias.shape == (64, 16)
    assert a_log.min() >= math.log(1.0) and a_log.max() <= math.log(16.0)
    assert dt.min() >= 1e-3 * (1 - 1e-5) and dt.max() <= 1e-1 * (1 + 1e-5)
    # Spread over the whole ranges (log-uniform dt: about half the mass below 1e-2).
    assert np.exp(a_log).max() - np.exp(a_log).min() > 10.0
    assert 0.3 < np.mean(dt < 1e-2) < 0.7


def test_no_weight_decay_on_decay_parameters():
    spec = model_spec(kda_cfg())
    mask = decay_mask(spec.param_shapes, spec.metadata)
    attn = mask["blocks"][0]["attn"]
    assert attn["A_log"] is False and attn["dt_bias"] is False
    assert attn["wq"]["kernel"] is True and attn["wf_up"]["kernel"] is True
    assert attn["o_norm"]["scale"] is False


def test_kda_rejects_rope_and_bad_chunks():
    cfg = kda_cfg()
    cfg.attention.kda.rope = True
    with pytest.raises(ValueError, match="attention.kda.rope"):
        KDAttention(cfg, 0, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="attention.kda.chunk_size"):
        KDAttention(kda_cfg(chunk_size=24), 0, rngs=nnx.Rngs(0))


def test_pattern_cycles_and_keeps_every_kind():
    cfg = kda_cfg(n_layers=6, attention_pattern="kda,kda,kda,mla")
    assert layer_kinds(cfg) == ["kda", "kda", "kda", "mla", "kda", "kda"]
    cfg.n_layers = 3
    with pytest.raises(ModelConfigError, match="model.n_layers=3 is shorter"):
        layer_kinds(cfg)


@pytest.mark.parametrize("pattern", ["kda,mla", "mla"])
def test_hybrid_model_is_causal(pattern):
    cfg = kda_cfg(attention_pattern=pattern)
    cfg.attention.mla.rope = pattern == "mla"
    model = TransformerLM(cfg, rngs=nnx.Rngs(0))
    T = 20
    x = jax.random.normal(jax.random.key(1), (1, T, cfg.d_model))
    grad = jax.jit(jax.grad(lambda x, t: jnp.take(model.forward_embeddings(x)[0], t, axis=0).sum()))
    for t in (0, 9, T - 2):
        g = grad(x, t)
        per_pos = np.abs(np.asarray(g[0])).sum(-1)
        assert np.all(per_pos[t + 1:] == 0.0), f"position {t} sees the future: {per_pos}"
        assert np.all(per_pos[: t + 1] > 0.0), f"position {t} ignores its past: {per_pos}"


# slow (~15 s on the 2-core CPU): training the kda,kda,kda,mla hybrid is covered in CI by
# tests/test_golden.py::test_three_steps_match_golden[kimi_linear] (its stored losses fall).
@pytest.mark.slow
def test_kimi_linear_model_trains():
    """A 4-layer kda,kda,kda,mla model fits a fixed batch: the loss falls."""
    cfg = kda_cfg(n_layers=4, attention_pattern="kda,kda,kda,mla")
    spec = model_spec(cfg)
    model = TransformerLM(cfg, rngs=nnx.Rngs(0))
    params = nnx.to_pure_dict(nnx.state(model))
    tokens = jax.random.randint(jax.random.key(0), (4, 33), 0, 64)
    tx = optax.adam(3e-3)

    def loss_fn(p):
        logits = spec.apply(p, tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, s = tx.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    opt = tx.init(params)
    losses = []
    for _ in range(8):
        params, opt, loss = step(params, opt)
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0] - 0.3, losses
