"""Mixture-of-experts MLP: the layer against a per-token loop, gradients, dropless
dispatch, the balance loss and bias update in the train step, decoding, accounting.

The multi-device tests (expert parallelism) are in ``tests/test_moe_mesh.py``.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import lm
from moba_jax import accounting
from moba_jax.checks import ConfigError
from moba_jax.decoding import incremental_logits
from moba_jax.model import default_model_config, param_counts, validate_model_config
from moba_jax.moe import MoE, expert_dim, mlp_kinds, routing
from moba_jax.moe import cost as moe_cost
from moba_jax.train import optim
from moba_jax.train.state import init_params, model_spec
from moba_jax.train.step import train_step


def moe_cfg(**moe):
    cfg = default_model_config()
    cfg.update(d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=96,
               mlp_pattern="moe")
    cfg.moe.update(dict(n_experts=6, top_k=2, n_shared=1), **moe)
    return cfg


def layer_and_input(cfg, seed=0, bias=None):
    layer = MoE(cfg, rngs=nnx.Rngs(seed))
    if bias is not None:
        layer.router_bias[...] = jnp.asarray(bias, jnp.float32)
    x = jax.random.normal(jax.random.key(seed + 1), (3, 10, cfg.d_model), jnp.float32)
    return layer, x


def swiglu64(x, wg, wu, wd):
    g, u = x @ wg, x @ wu
    return (g / (1 + np.exp(-g)) * u) @ wd


def per_token_loop(layer, cfg, x_BTD):
    """The MoE layer written out token by token in float64: score every expert, take the
    top-k of score + bias, run each chosen expert on the token, add the shared experts."""
    p = {k: np.asarray(v, np.float64) for k, v in nnx.to_pure_dict(nnx.state(layer)).items()
         if not isinstance(v, dict)}
    x = np.asarray(x_BTD, np.float64).reshape(-1, cfg.d_model)
    out, gaps = np.zeros_like(x), []
    m = cfg.moe
    for n in range(x.shape[0]):
        logits = x[n] @ p["router"]
        if m.score == "sigmoid":
            s = 1 / (1 + np.exp(-logits))
        else:
            s = np.exp(logits - logits.max())
            s /= s.sum()
        sel = s + p["router_bias"]
        order = np.argsort(-sel)
        chosen = order[:m.top_k]
        gaps.append(sel[order[m.top_k - 1]] - sel[order[m.top_k]])
        g = s[chosen] / (s[chosen].sum() if m.normalize else 1.0) * m.route_scale
        for e, w in zip(chosen, g):
            out[n] += w * swiglu64(x[n], p["gate"][e], p["up"][e], p["down"][e])
        if m.n_shared:
            sh = {k: np.asarray(v["kernel"], np.float64)
                  for k, v in nnx.to_pure_dict(nnx.state(layer.shared)).items()}
            out[n] += swiglu64(x[n], sh["gate"], sh["up"], sh["down"])
    return out.reshape(x_BTD.shape), min(gaps)


@pytest.mark.parametrize("implementation", ["ragged", "dense"])
@pytest.mark.parametrize("score,n_shared,normalize,scale", [
    ("sigmoid", 1, True, 2.446), ("sigmoid", 0, True, 1.0), ("softmax", 2, False, 1.0),
    ("softmax", 1, True, 1.0)])
def test_layer_equals_per_token_loop(implementation, score, n_shared, normalize, scale):
    cfg = moe_cfg(implementation=implementation, score=score, n_shared=n_shared,
                  normalize=normalize, route_scale=scale)
    # A bias that changes some choices but never enters the gates.
    layer, x = layer_and_input(cfg, bias=[0.0, 0.05, -0.05, 0.1, 0.0, -0.1])
    y, stats = jax.jit(lambda x: layer.forward(x))(x)
    want, gap = per_token_loop(layer, cfg, x)
    assert gap > 1e-5, "a near-tie in the top-k choice would make the comparison fragile"
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    n = x.shape[0] * x.shape[1]
    assert float(stats["dropped"]) == 0 and float(jnp.sum(stats["load"])) == n * cfg.moe.top_k


def test_dropless_under_total_imbalance():
    """Every token sent to the same two experts: nothing is dropped (no capacity), and
    the output still equals the loop's."""
    cfg = moe_cfg(implementation="ragged")
    layer, x = layer_and_input(cfg, bias=[0, 0, 0, 0, 50.0, 40.0])
    y, stats = layer.forward(x)
    n = x.shape[0] * x.shape[1]
    np.testing.assert_array_equal(np.asarray(stats["load"]), [0, 0, 0, 0, n, n])
    assert float(stats["dropped"]) == 0
    want, _ = per_token_loop(layer, cfg, x)
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("implementation", ["ragged", "dense"])
def test_gradients_reach_router_and_experts_not_the_bias(implementation):
    cfg = moe_cfg(implementation=implementation, aux_loss_coef=1e-2)
    layer, x = layer_and_input(cfg)
    graphdef, state = nnx.split(layer)
    w = jax.random.normal(jax.random.key(7), x.shape)

    def loss(state, balance_only=False):
        y, s = nnx.merge(graphdef, state).forward(x)
        return jnp.sum(s["objective"]) if balance_only else jnp.sum(y * w)

    g = nnx.to_pure_dict(jax.grad(loss)(state))
    for name in ("router", "gate", "up", "down"):
        assert float(jnp.abs(g[name]).max()) > 0, name
        assert bool(jnp.all(jnp.isfinite(g[name]))), name
    # Every expert that was chosen gets a gradient.
    counts = np.asarray(layer.forward(x)[1]["load"])
    per_expert = np.asarray(jnp.abs(g["down"]).sum(axis=(1, 2)))
    assert np.all((per_expert > 0) == (counts > 0))
    assert float(jnp.abs(g["shared"]["up"]["kernel"]).max()) > 0
    assert float(jnp.abs(g["router_bias"]).max()) == 0.0
    # The balance loss trains the router only.
    gb = nnx.to_pure_dict(jax.grad(functools.partial(loss, balance_only=True))(state))
    assert float(jnp.abs(gb["router"]).max()) > 0 and float(jnp.abs(gb["gate"]).max()) == 0


def test_sequence_balance_loss():
    b, t, e, k = 2, 5, 4, 2
    s = jax.random.uniform(jax.random.key(0), (b, t, e), minval=0.1)
    idx = jax.lax.top_k(s, k)[1]
    got = np.asarray(routing.sequence_balance_loss(s, idx))
    s64, idx = np.asarray(s, np.float64), np.asarray(idx)
    for i in range(b):
        f = np.array([(idx[i] == j).sum() for j in range(e)]) * e / (k * t)
        p = (s64[i] / s64[i].sum(-1, keepdims=True)).mean(0)
        np.testing.assert_allclose(got[i], (f * p).sum(), rtol=1e-6)
    # Perfect balance with uniform scores gives exactly 1.
    flat = jnp.full((1, 4, 4), 0.5)
    balanced = jnp.array([[[0, 1], [2, 3], [0, 1], [2, 3]]])
    np.testing.assert_allclose(routing.sequence_balance_loss(flat, balanced), [1.0], rtol=1e-6)


def tiny_spec_and_state(cfg, grad_clip=1.0):
    c = lm.get_config("tiny")
    c.model = cfg
    c.train.grad_clip = grad_clip
    spec = model_spec(cfg)
    tx, schedule = optim.make_optimizer(c.train, 10, spec.param_shapes, spec.metadata)
    params = init_params(cfg, 0)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.asarray(3, jnp.int32)}
    return spec, tx, schedule, state


def batch_of(b=4, t=16, seed=0):
    tok = jax.random.randint(jax.random.key(seed), (b, t + 1), 0, 256)
    mask = jnp.ones((b, t), jnp.float32).at[1, 11:].set(0.0)
    return {"inputs": tok[:, :-1], "targets": tok[:, 1:], "loss_mask": mask,
            "positions": jnp.broadcast_to(jnp.arange(t), (b, t))}


def test_train_step_bias_update_metrics_and_grad_accumulation():
    """One step: the bias moves against the whole batch's load imbalance, the metrics
    report it, and two micro-batches give the full batch's update (the balance loss is
    per sequence, so it splits exactly)."""
    cfg = moe_cfg(aux_loss_coef=1e-2, bias_update_rate=1e-3, implementation="dense")
    spec, tx, schedule, state = tiny_spec_and_state(cfg)
    batch = batch_of()
    step = lambda a: jax.jit(functools.partial(train_step, spec=spec, tx=tx, schedule=schedule,
                                               grad_accum=a))
    new1, m1 = step(1)(jax.tree.map(jnp.copy, state), batch)
    new2, m2 = step(2)(jax.tree.map(jnp.copy, state), batch)
    for k in ("train_loss", "grad_norm", "moe_aux_loss", "moe_load_max_over_mean", "moe_dropped"):
        np.testing.assert_allclose(m1[k], m2[k], rtol=2e-5, err_msg=k)
    np.testing.assert_allclose(m1["moe_load"], m2["moe_load"], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 new1["params"], new2["params"])

    load = np.asarray(m1["moe_load"])                       # [layers, experts], fractions
    assert load.shape == (2, 6) and np.allclose(load.sum(1), 1.0)
    assert float(m1["moe_dropped"]) == 0.0 and float(m1["moe_aux_loss"]) > 0.9
    np.testing.assert_allclose(m1["moe_load_max_over_mean"], np.mean(load.max(1) / load.mean(1)),
                               rtol=1e-5)
    for li in range(2):
        old = np.asarray(state["params"]["blocks"][li]["mlp"]["router_bias"])
        new = np.asarray(new1["params"]["blocks"][li]["mlp"]["router_bias"])
        np.testing.assert_allclose(new - old, 1e-3 * np.sign(load[li].mean() - load[li]),
                                   atol=1e-9)
    # The balance loss is in the objective, not in train_loss.
    logits = jax.jit(spec.apply)(state["params"], batch["inputs"])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["loss_mask"]
    np.testing.assert_allclose(m1["train_loss"], jnp.sum(ce * mask) / jnp.sum(mask), rtol=1e-6)


def test_decoding_matches_the_forward_pass():
    cfg = moe_cfg(n_experts=4)
    cfg.update(first_k_dense=1, attention_pattern="full")
    spec = model_spec(cfg)
    params = init_params(cfg, 0)
    params["blocks"][1]["mlp"]["router_bias"] = jnp.asarray([0.02, -0.01, 0.0, 0.01])
    tokens = jax.random.randint(jax.random.key(0), (2, 9), 0, 259)
    full = jax.jit(spec.apply)(params, tokens)
    inc = incremental_logits(spec, params, tokens, prefill=4)
    np.testing.assert_allclose(inc, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [
    dict(), dict(first_k_dense=1, tie_embeddings=False), dict(mlp_pattern="dense,moe"),
    dict(moe=dict(n_shared=0, expert_dim=24, n_experts=5, top_k=3))])
def test_parameter_counts_total_and_activated(overrides):
    cfg = moe_cfg()
    moe = overrides.pop("moe", {})
    cfg.update(overrides)
    cfg.moe.update(moe)
    counts = param_counts(model_spec(cfg).param_shapes)
    assert counts["non_embedding"] == accounting.non_embedding_params(cfg)
    d, f, m = cfg.d_model, expert_dim(cfg), cfg.moe
    n_moe = mlp_kinds(cfg).count("moe")
    unused = n_moe * 3 * d * f * (m.n_experts - m.top_k)
    assert accounting.activated_params(cfg) == counts["non_embedding"] - unused
    assert accounting.train_flops_per_token(cfg, 64, "6nd") == 6 * accounting.activated_params(cfg)
    # exact: the activated matmuls (router, top-k and shared experts), not the idle experts.
    exact = accounting.forward_flops_per_token(cfg, 64, "exact")["mlp"]
    dense_mlp = mlp_kinds(cfg).count("dense") * 2 * 3 * d * cfg.mlp_dim
    assert exact == pytest.approx(dense_mlp + n_moe * 2 * (d * m.n_experts
                                                           + 3 * d * f * (m.top_k + m.n_shared)))


def test_dense_model_config_is_unchanged_by_the_moe_fields():
    cfg = default_model_config()
    assert mlp_kinds(cfg) == ["dense"] * cfg.n_layers
    assert accounting.activated_params(cfg) == accounting.non_embedding_params(cfg)
    old = default_model_config()
    for k in ("mlp_pattern", "first_k_dense", "moe"):
        del old[k]                    # a config recorded before the MoE fields existed
    assert mlp_kinds(old) == ["dense"] * old.n_layers
    assert accounting.non_embedding_params(old) == accounting.non_embedding_params(cfg)


@pytest.mark.parametrize("field,value,match", [
    ("mlp_pattern", "moe,sparse", "model.mlp_pattern"),
    ("first_k_dense", 9, "model.first_k_dense"),
    ("moe.top_k", 7, "model.moe.top_k"),
    ("moe.score", "relu", "model.moe.score"),
    ("moe.implementation", "capacity", "model.moe.implementation"),
    ("moe.bias_update_rate", -1e-3, "model.moe.bias_update_rate")])
def test_bad_moe_options_are_one_line_errors(field, value, match):
    cfg = moe_cfg()
    *head, last = field.split(".")
    (cfg.moe if head else cfg)[last] = value
    with pytest.raises(ConfigError, match=match):
        validate_model_config(cfg)


def test_moe_options_of_a_dense_model_are_not_checked():
    cfg = default_model_config()
    cfg.moe.top_k = 99
    validate_model_config(cfg)


def xla_flops(fn, *args):
    # LLVM optimisation level 0 halves compile times and leaves the cost analysis (taken
    # on the optimised HLO) unchanged, as in tests/test_flops_train.py.
    cost = jax.jit(fn).lower(*args).compile({"xla_backend_optimization_level": 0}).cost_analysis()
    return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def test_compiled_count_of_the_dense_implementation_matches_xla():
    """The "compiled" count of a model with MoE layers (routing included) against XLA's
    cost analysis, forward and training step. The "dense" implementation computes on
    CPU what it would anywhere; "ragged" is checked by its lowering below."""
    cfg = moe_cfg(implementation="dense", n_experts=8, aux_loss_coef=1e-4)
    cfg.update(d_model=64, mlp_dim=192, n_layers=3, first_k_dense=1, head_dim=16)
    b, t = 2, 64
    spec, tx, schedule, _ = tiny_spec_and_state(cfg)
    tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)
    fwd = xla_flops(spec.apply, spec.param_shapes, tokens)
    ours = accounting.forward_flops_per_token(cfg, t, "compiled")["total"] * b * t
    assert abs(ours - fwd) / fwd < 0.05, f"forward: ours {ours:.4g} vs XLA {fwd:.4g}"
    state = {"params": spec.param_shapes, "opt_state": jax.eval_shape(tx.init, spec.param_shapes),
             "step": jax.ShapeDtypeStruct((), jnp.int32)}
    batch = {"inputs": tokens, "targets": tokens, "positions": tokens,
             "loss_mask": jax.ShapeDtypeStruct((b, t), jnp.float32)}
    train = xla_flops(functools.partial(train_step, spec=spec, tx=tx, schedule=schedule,
                                        grad_accum=1), state, batch)
    ours = accounting.train_step_flops(cfg, t, b)
    assert abs(ours - train) / train < 0.05, f"train step: ours {ours:.4g} vs XLA {train:.4g}"
    assert moe_cost.layer_flops(cfg, "compiled")[0] > moe_cost.layer_flops(cfg, "exact")[0]


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_ragged_dispatch_lowers_to_a_grouped_matmul(platform):
    """On TPU and GPU the dropless dispatch is one ``ragged_dot`` per projection (not
    the dense expansion XLA:CPU uses); cross-platform lowering, nothing runs."""
    cfg = moe_cfg(implementation="ragged")
    layer, x = layer_and_input(cfg)
    graphdef, state = nnx.split(layer)
    text = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x)).trace(state, x).lower(
        lowering_platforms=(platform,)).as_text()
    assert text.count("ragged_dot") >= 3


def test_expert_weights_take_the_expert_rule():
    """The rules table shards the experts' leading axis over ``fsdp`` (expert
    parallelism); replicating ``expert`` hands ``fsdp`` to their ``embed`` axis."""
    from moba_jax import sharding as shd
    from moba_jax.train.state import param_shardings
    c = lm.get_config("tiny")
    c.model.update(mlp_pattern="moe")
    spec = model_spec(c.model)
    mesh = shd.make_mesh(1, 1, 1)

    def specs(rules):
        sh = param_shardings(spec, mesh, shd.rules_from_config(rules))["blocks"][0]["mlp"]
        return {k: tuple(sh[k].spec) for k in ("gate", "down", "router", "router_bias")}

    assert specs(c.mesh.rules) == {"gate": ("fsdp", None, "tensor"), "down": ("fsdp", "tensor", None),
                                   "router": ("fsdp", None), "router_bias": ("fsdp",)}
    c.mesh.rules.expert = ""
    assert specs(c.mesh.rules)["gate"] == (None, "fsdp", "tensor")


def test_muon_orthogonalises_each_expert_and_leaves_the_bias_to_adamw():
    """With ``train.optimizer=muon`` each expert's ``[D, F]`` matrix is one Muon matrix
    (the expert axis is a batch axis), the router one ``[D, E]`` matrix, and the
    balancing bias goes to AdamW (its gradient is zero; the train step moves it)."""
    c = lm.get_config("tiny")
    c.model.update(mlp_pattern="moe")
    spec = model_spec(c.model)
    dims = optim.muon_dimensions(spec.param_shapes, spec.metadata)["blocks"][0]["mlp"]
    assert (dims["gate"].reduction_axis, dims["gate"].output_axis) == ((1,), (2,))
    assert (dims["down"].reduction_axis, dims["down"].output_axis) == ((1,), (2,))
    assert (dims["router"].reduction_axis, dims["router"].output_axis) == ((0,), (1,))
    assert dims["router_bias"] is None
