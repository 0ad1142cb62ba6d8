"""Router scores, top-k choice, the balance loss and the bias update (pure functions).

Notation of DeepSeek-V3 (arXiv 2412.19437, section 2.1.2): token t, expert i,
affinity ``s_{i,t}``, chosen set ``TopK``, gate ``g_{i,t}``.

- Scores: ``s = sigmoid(u_t . e_i)`` (DeepSeek-V3 eq. 15; Moonlight arXiv 2502.16982 and
  Kimi Linear arXiv 2510.26692 use the DeepSeek-V3 MoE, ``moe_router_activation_func
  = sigmoid`` in Kimi Linear's config) or ``s = softmax_i(u_t . e_i)`` (DeepSeekMoE
  arXiv 2401.06066, DeepSeek-V2, Switch). The router runs in float32.
- Choice: the top-k of ``s_{i,t} + b_i`` with ``b`` the per-expert bias, which
  enters the choice only, never the gate (DeepSeek-V3 eq. 16, "auxiliary-loss-free
  load balancing"; Wang et al. arXiv 2408.15664).
- Gates: the chosen scores, divided by their sum when ``normalize`` (eq. 13), times
  ``route_scale``.
- Bias update, once per training step over the whole global batch: ``b_i += gamma *
  sign(mean_j load_j - load_i)`` (DeepSeek-V3: "decrease by gamma if overloaded,
  increase if underloaded"; Wang et al. Algorithm 1).
- Balance loss, per sequence of T tokens (DeepSeek-V3 eq. 17-20, the complementary
  sequence-wise loss): ``f_i = E / (K T) * #{t: i in TopK_t}``, ``P_i = 1/T sum_t
  s_{i,t} / sum_j s_{j,t}``, ``L = sum_i f_i P_i`` (1 when perfectly balanced). With
  softmax scores this is the expert-level balance loss of DeepSeekMoE / Switch
  (there over the batch; here per sequence, so that it does not depend on how a
  batch is split into micro-batches).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def scores(logits_NE: jax.Array, score: str) -> jax.Array:
    """Router affinities ``s`` (float32) from router logits."""
    logits_NE = logits_NE.astype(jnp.float32)
    if score == "sigmoid":
        return jax.nn.sigmoid(logits_NE)
    if score == "softmax":
        return jax.nn.softmax(logits_NE, axis=-1)
    raise ValueError(f"unknown router score {score!r}")


def choose(s_NE: jax.Array, bias_E: jax.Array, top_k: int, *, normalize: bool,
           route_scale: float) -> tuple[jax.Array, jax.Array]:
    """``(experts_NK int32, gates_NK float32)``: the top-k experts of ``s + bias`` and
    their gates (the unbiased scores, normalised and scaled)."""
    _, idx = jax.lax.top_k(s_NE + jax.lax.stop_gradient(bias_E), top_k)
    gates = jnp.take_along_axis(s_NE, idx, axis=-1)
    if normalize:
        gates = gates / (jnp.sum(gates, axis=-1, keepdims=True) + 1e-20)
    return idx.astype(jnp.int32), gates * route_scale


def expert_counts(experts_NK: jax.Array, n_experts: int) -> jax.Array:
    """Assignments per expert ``[E]`` (int32)."""
    return jnp.bincount(experts_NK.reshape(-1), length=n_experts).astype(jnp.int32)


def sequence_balance_loss(s_BTE: jax.Array, experts_BTK: jax.Array) -> jax.Array:
    """DeepSeek-V3's sequence-wise balance loss of every sequence, ``[B]`` float32
    (module docstring). Gradients reach the router through ``P``; ``f`` is a count."""
    b, t, e = s_BTE.shape
    k = experts_BTK.shape[-1]
    chosen = jnp.sum(jax.nn.one_hot(experts_BTK, e, dtype=jnp.float32), axis=2)   # [B, T, E]
    f = (e / (k * t)) * jnp.sum(chosen, axis=1)                                  # [B, E]
    p = jnp.mean(s_BTE / jnp.sum(s_BTE, axis=-1, keepdims=True), axis=1)          # [B, E]
    return jnp.sum(f * p, axis=-1)


def bias_step(bias_E: jax.Array, load_E: jax.Array, rate: float) -> jax.Array:
    """The bias after one update against the load imbalance ``load`` (counts or
    fractions; only their signs relative to the mean matter)."""
    load = load_E.astype(jnp.float32)
    return bias_E + rate * jnp.sign(jnp.mean(load) - load)
