"""The pure train and eval steps (one jit boundary each).

A model with mixture-of-experts layers also returns router statistics from its forward
pass (``TransformerLM.forward_with_aux``): the train step adds their balance loss to
the objective (never to ``train_loss``), moves the routers' balancing biases once per
step by the whole batch's expert loads, and reports them as ``moe_*`` metrics
(``moba_jax/moe/stats.py``). A dense model's step is unchanged.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from moba_jax import sharding as shd
from moba_jax.moe import stats as moe_stats
from moba_jax.train import optim, state as st


BATCH_KEYS = ("inputs", "targets", "loss_mask", "positions")


def token_losses(spec, params, batch):
    """Per-token cross-entropy (nats) ``[B, T]`` and the logits' dtype-safe mask."""
    logits = spec.apply(params, batch["inputs"], batch["positions"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    return losses, batch["loss_mask"].astype(jnp.float32)


def _sum_loss(spec, params, batch):
    """``(objective, (summed loss, loss tokens, router sums))``: the objective is the
    summed loss plus, for MoE layers, their balance-loss term (``{}`` sums: dense)."""
    logits, aux = nnx.merge(spec.graphdef, params).forward_with_aux(batch["inputs"],
                                                                   batch["positions"])
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
    mask = batch["loss_mask"].astype(jnp.float32)
    loss_sum = jnp.sum(losses * mask)
    if not aux:
        return loss_sum, (loss_sum, jnp.sum(mask), {})
    extra, sums = moe_stats.batch_sums(aux, mask)
    return loss_sum + extra, (loss_sum, jnp.sum(mask), sums)


def _update_router_biases(spec, params, load_LE):
    """The parameters with each MoE layer's balancing bias moved by its load."""
    model = nnx.merge(spec.graphdef, params)
    model.update_router_biases(load_LE)
    return nnx.to_pure_dict(nnx.state(model))


def train_step(state, batch, *, spec, tx, schedule, grad_accum: int):
    """One optimizer step on a global batch; returns ``(new_state, metrics)``.

    With ``grad_accum = A`` the batch is split into A micro-batches whose summed
    gradients are normalised by the total number of loss tokens, so the update
    equals that of the full batch.
    """
    params = state["params"]
    grad_fn = jax.value_and_grad(lambda p, b: _sum_loss(spec, p, b), has_aux=True)

    def micro(carry, mb):
        g_acc, l_acc, n_acc, s_acc = carry
        (_, (loss_sum, n, sums)), g = grad_fn(params, mb)
        return (jax.tree.map(jnp.add, g_acc, g), l_acc + loss_sum, n_acc + n,
                jax.tree.map(jnp.add, s_acc, sums)), None

    if grad_accum == 1:
        (_, (loss_sum, n, sums)), grads = grad_fn(params, batch)
    else:
        mbs = jax.tree.map(
            lambda x: x.reshape((grad_accum, x.shape[0] // grad_accum) + x.shape[1:]), batch)
        zeros = jax.tree.map(jnp.zeros_like, params)
        sums_shape = jax.eval_shape(lambda b: _sum_loss(spec, params, b)[1][2],
                                    jax.tree.map(lambda x: x[0], mbs))
        zero_sums = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
        (grads, loss_sum, n, sums), _ = jax.lax.scan(micro, (zeros, 0.0, 0.0, zero_sums), mbs)
    n = jnp.maximum(n, 1.0)
    grads = jax.tree.map(lambda g: g / n, grads)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_params = optax.apply_updates(params, updates)
    metrics = {"train_loss": loss_sum / n, "grad_norm": grad_norm,
               "lr": schedule(state["step"]), "loss_tokens": n}
    if sums:
        new_params = _update_router_biases(spec, new_params, sums["moe_load"])
        metrics.update(moe_stats.metrics(sums, n))
    new_state = {"params": new_params, "opt_state": opt_state, "step": state["step"] + 1}
    return new_state, metrics


def eval_step(params, batch, *, spec):
    """Summed validation loss and token count of one batch, then the same per sequence
    (row): ``(loss_sum, n, row_loss_sums [B], row_counts [B])``. The batch totals are
    computed exactly as the training loss is, so the validation loss does not depend on
    the per-row outputs; those feed :func:`sequence_standard_error`."""
    losses, mask = token_losses(spec, params, batch)
    return (jnp.sum(losses * mask), jnp.sum(mask),
            jnp.sum(losses * mask, axis=1), jnp.sum(mask, axis=1))


@dataclasses.dataclass(frozen=True)
class StepSetup:
    """What the jitted steps of a run config are built from: its mesh and sharding rules,
    model spec, optimizer and learning-rate schedule, and the state's and batch's shardings."""
    mesh: Mesh
    rules: Any
    spec: Any
    tx: optax.GradientTransformation
    schedule: Callable
    state_sharding: Any
    batch_sharding: NamedSharding


def setup(config, total_steps: int, *, mesh: Mesh | None = None) -> StepSetup:
    """The :class:`StepSetup` of ``config`` (a run config: model, train, mesh) for a run of
    ``total_steps`` optimizer steps (the schedule's length), on ``mesh`` (default: the one
    ``config.mesh`` describes). The trainer and :mod:`moba_jax.train.throughput` share it."""
    t = config.train
    if mesh is None:
        mesh = shd.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor)
    rules = shd.rules_from_config(config.mesh.get("rules"))
    spec = st.model_spec(config.model, t.seed)
    tx, schedule = optim.make_optimizer(t, total_steps, spec.param_shapes, spec.metadata)
    return StepSetup(mesh, rules, spec, tx, schedule, st.state_shardings(spec, tx, mesh, rules),
                     NamedSharding(mesh, P(("data", "fsdp"), None)))


def jit_train_step(spec, tx, schedule, grad_accum, state_sharding, batch_sharding):
    fn = functools.partial(train_step, spec=spec, tx=tx, schedule=schedule, grad_accum=grad_accum)
    return jax.jit(fn, in_shardings=(state_sharding, batch_sharding),
                   out_shardings=(state_sharding, None), donate_argnums=(0,))


def jit_eval_step(spec, param_sharding, batch_sharding):
    # The per-row outputs come back replicated: every process can read them whole.
    rows = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
    return jax.jit(functools.partial(eval_step, spec=spec),
                   in_shardings=(param_sharding, batch_sharding),
                   out_shardings=(None, None, rows, rows))


def sequence_standard_error(row_loss_sums, row_counts) -> float | None:
    """Standard error of the token-weighted mean loss ``sum(s) / sum(n)`` over sequences.

    Sequences, not tokens, are the independent units (tokens of one sequence share its
    document, so their losses are correlated; a per-token SE would be too small). The
    mean is a ratio over clusters, whose standard error is
    ``sqrt(k / (k - 1) * sum((s_i - mean * n_i)^2)) / sum(n_i)`` over the ``k`` rows with
    loss tokens (``s_i``: a row's summed loss, ``n_i``: its loss tokens; all-PAD fill rows
    are left out). When every row has the same number of tokens this is
    ``std(per-row mean, ddof=1) / sqrt(k)``. ``None`` with fewer than two such rows.
    Host-side, in float64.
    """
    s = np.asarray(row_loss_sums, np.float64).ravel()
    n = np.asarray(row_counts, np.float64).ravel()
    s, n = s[n > 0], n[n > 0]
    k = len(n)
    if k < 2:
        return None
    mean = s.sum() / n.sum()
    return float(np.sqrt(k / (k - 1) * np.sum((s - mean * n) ** 2)) / n.sum())
