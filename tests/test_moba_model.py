"""MoBA inside the model: causality, equivalences, hybrids, FLOPs, paper config."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from moba_jax import accounting, units
from moba_jax.attention.moba import moba_keys_per_token
from configs import moba_paper
from kernels.moba.reference import selected_block_mask
from moba_jax.budget import RunConfigError, run_length
from moba_jax.model import TransformerLM, default_model_config, layer_kinds
from moba_jax.sweep import plan_sweep


def moba_cfg(block_size=4, top_k=2, impl="xla", **kw):
    cfg = default_model_config()
    cfg.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64,
               attention_pattern="moba")
    cfg.attention.moba.update(block_size=block_size, top_k=top_k, implementation=impl)
    cfg.update(kw)
    return cfg


@nnx.jit
def forward(model, tokens):
    """The model's logits, compiled (eager op-by-op dispatch is ~5x slower here)."""
    return model(tokens)


def test_moba_equals_full_attention_when_all_blocks_fit():
    """T <= top_k * block_size: MoBA selects every past block, i.e. full attention."""
    cfg = moba_cfg(block_size=8, top_k=2)
    tokens = jax.random.randint(jax.random.key(0), (2, 16), 0, 259)
    moba_logits = forward(TransformerLM(cfg, rngs=nnx.Rngs(3)), tokens)
    cfg.attention_pattern = "full"
    full_logits = forward(TransformerLM(cfg, rngs=nnx.Rngs(3)), tokens)
    np.testing.assert_allclose(moba_logits, full_logits, rtol=1e-5, atol=1e-5)


def test_moba_differs_from_full_when_sparse():
    cfg = moba_cfg(block_size=4, top_k=2)
    tokens = jax.random.randint(jax.random.key(0), (1, 32), 0, 259)
    a = forward(TransformerLM(cfg, rngs=nnx.Rngs(3)), tokens)
    cfg.attention_pattern = "full"
    b = forward(TransformerLM(cfg, rngs=nnx.Rngs(3)), tokens)
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3


def test_blocked_implementation_matches_xla_in_the_model():
    """The layer's ``implementation`` switch: same logits and loss gradients."""
    tokens = jax.random.randint(jax.random.key(1), (2, 40), 0, 259)

    def logits_and_grad(impl):
        model = TransformerLM(moba_cfg(block_size=8, top_k=3, impl=impl), rngs=nnx.Rngs(3))
        loss = lambda m: jnp.mean(m(tokens) ** 2)
        return forward(model, tokens), nnx.jit(nnx.grad(loss))(model)
    (a, ga), (b, gb) = logits_and_grad("xla"), logits_and_grad("blocked")
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_layerwise_hybrid_kinds():
    cfg = moba_cfg(n_layers=4, full_attention_last_n=3)
    assert layer_kinds(cfg) == ["moba", "full", "full", "full"]


@pytest.mark.parametrize("T,bs,k", [(64, 8, 3), (100, 16, 2), (37, 8, 1), (20, 32, 3)])
def test_exact_moba_pairs_match_selection_mask(T, bs, k):
    """The exact FLOP count's keys per query equal the pairs of the reference mask."""
    q = jax.random.normal(jax.random.key(0), (1, T, 2, 8))
    kk = jax.random.normal(jax.random.key(1), (1, T, 1, 8))
    mask = jax.jit(selected_block_mask, static_argnames=("block_size", "top_k"))
    blocks = np.asarray(mask(q, kk, block_size=bs, top_k=k))[0]                  # [T, H, N]
    allowed = blocks[:, :, np.arange(T) // bs]                                  # [T, H, S]
    allowed &= np.tril(np.ones((T, T), bool))[:, None, :]
    pairs = allowed.sum() / blocks.shape[1]                                     # per head
    keys, _ = moba_keys_per_token(T, bs, k)
    assert keys * T == pytest.approx(pairs)


def test_moba_6nd_equals_full_and_exact_is_cheaper():
    cfg = moba_cfg(block_size=32, top_k=3)
    full = moba_cfg(attention_pattern="full")
    T = 512
    assert accounting.train_flops_per_token(cfg, T, "6nd") == accounting.train_flops_per_token(full, T, "6nd")
    assert accounting.train_flops_per_token(cfg, T, "exact") < accounting.train_flops_per_token(full, T, "exact")
    # T <= top_k * Bs: MoBA needs the causal pairs plus its gating and pooling.
    small = moba_cfg(block_size=32, top_k=3)
    a = accounting.forward_flops_per_token(small, 64, "exact")["attention"]
    b = accounting.forward_flops_per_token(full, 64, "exact")["attention"]
    assert a > b and a - b < 0.05 * b


def test_switch_to_full_budget_and_phases():
    cfg = moba_cfg(block_size=16, top_k=2)
    from configs.lm import train_config
    t = train_config()
    t.update(seq_len=128, global_batch=4, steps=0, budget_flops=5e10, switch_to_full_at=0.9)
    length = run_length(cfg, t)
    assert length.switch_step == round(0.9 * length.steps)
    per_step = lambda f: f["exact"] * length.tokens_per_step
    assert length.flops_at(length.steps)["exact"] <= 5e10
    assert length.flops_at(length.steps)["exact"] + per_step(length.flops_per_token_after) > 5e10
    # Phase 2 (full attention) costs more per token than phase 1 (MoBA).
    assert length.flops_per_token_after["exact"] > length.flops_per_token["exact"]
    t.switch_to_full_at = 1.5
    with pytest.raises(RunConfigError, match="switch_to_full_at"):
        run_length(cfg, t)


def test_moba_paper_dry_run_matches_table1():
    plans = plan_sweep(moba_paper.get_config())
    targets = {name: n for name, n, *_ in moba_paper.TABLE1}
    assert {p.arm for p in plans} == {"full", "moba"}
    for p in plans:
        assert abs(p.n_params_nonembed / targets[p.size] - 1) < 0.02, (p.size, p.n_params_nonembed)
        assert p.config.train.seq_len == 8192
        if p.arm == "moba":
            assert p.config.model.attention.moba.block_size == 512
            assert p.config.model.attention.moba.top_k == 3
    pfd = sorted({round(units.to_pflops_days(p.budget_flops), 2) for p in plans})
    assert pfd[0] == pytest.approx(0.41, abs=0.01) and pfd[-1] == pytest.approx(5.38, abs=0.02)
