"""The mixture-of-experts MLP layer: router, routed SwiGLU experts, shared experts.

``y = Shared(x) + sum_{i in TopK(x)} g_i(x) * Expert_i(x)`` (DeepSeekMoE's fine-grained
routed experts plus always-active shared experts; routing in
:mod:`moba_jax.moe.routing`). Every expert is a SwiGLU of width ``expert_dim``.

Dispatch (``implementation``):

- ``"ragged"`` (dropless, the default): the ``N * K`` (token, expert) assignments are
  sorted by expert, the tokens gathered in that order, and each projection is one
  ``jax.lax.ragged_dot`` over the groups (every assignment is computed: no capacity,
  no dropped tokens; MegaBlocks, arXiv 2211.15841, and DeepSeek-V3's "no
  token-dropping"). On TPU and GPU ``ragged_dot`` is a grouped matmul over the
  assignments; XLA:CPU has none and expands it to every expert (E times the work).
- ``"dense"``: every expert on every token, combined with the gates (zero for the
  experts not chosen). The same function; a reference and the cheaper CPU path for
  small E.

Expert parallelism: the experts' weights ``[E, ...]`` carry the logical axis
``expert``, which the rules table maps to a mesh axis (``fsdp`` by default, see
``moba_jax/sharding.py``), so each device of that axis holds ``E / size`` experts.
XLA's partitioner moves tokens, not weights: in the program compiled for 4 simulated
CPU devices the expert weights are never gathered; "ragged" gathers the (token,
expert) assignments over the axis, each device computes its own experts' rows and
the parts are summed (all-reduce); "dense" returns each expert's outputs to the
tokens' devices by an all-to-all. An explicit shard_map all-to-all dispatch (tokens
sent only to their experts' devices) is not written.

Router statistics come back from :meth:`MoE.forward` (``load``: assignments per
expert, ``balance``: the balance loss per sequence, ``dropped``: assignments not
computed, always 0 here; ``objective``: ``aux_loss_coef * balance``, the term the
training loss adds). The balancing bias is a :class:`RouterBias` variable, moved by
:meth:`MoE.update_bias` outside the gradient step.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from moba_jax import layers
from moba_jax.moe import routing
from moba_jax.moe.config import expert_dim


class RouterBias(nnx.Variable):
    """Per-expert bias of the top-k choice (auxiliary-loss-free balancing). Not trained
    by gradients (its gradient is zero: it enters only the choice); the train step
    moves it by the load imbalance."""


def _matrix(rngs, fan_in, shape, axes, *, experts=False, scale=1.0) -> nnx.Param:
    """A float32 matmul weight with its logical axes; ``in_dims`` / ``batch_dims`` say
    which axes it reduces over and which index experts (read by the Muon optimizer,
    which orthogonalises each expert's matrix on its own)."""
    value = layers.fan_in_init(fan_in, scale)(rngs.params(), tuple(shape), jnp.float32)
    return nnx.Param(value, logical_axes=tuple(axes), in_dims=1, batch_dims=int(experts))


def _swiglu_ragged(x_MD, wg, wu, wd, group_sizes):
    h = jax.nn.silu(jax.lax.ragged_dot(x_MD, wg, group_sizes)) * \
        jax.lax.ragged_dot(x_MD, wu, group_sizes)
    return jax.lax.ragged_dot(h, wd, group_sizes)


def dispatch_ragged(x_ND, experts_NK, gates_NK, wg_EDF, wu_EDF, wd_EFD):
    """Dropless routed output ``[N, D]`` and the assignments per expert ``[E]``."""
    n, k = experts_NK.shape
    flat = experts_NK.reshape(-1)                               # [M = N*K]
    order = jnp.argsort(flat, stable=True)                      # assignments by expert
    token = order // k
    counts = routing.expert_counts(experts_NK, wg_EDF.shape[0])
    y_sorted = _swiglu_ragged(jnp.take(x_ND, token, axis=0), wg_EDF, wu_EDF, wd_EFD, counts)
    inverse = jnp.zeros_like(order).at[order].set(jnp.arange(order.shape[0], dtype=order.dtype))
    y_NKD = jnp.take(y_sorted, inverse, axis=0).reshape(n, k, -1)
    return jnp.einsum("nkd,nk->nd", y_NKD.astype(jnp.float32), gates_NK), counts


def dispatch_dense(x_ND, experts_NK, gates_NK, wg_EDF, wu_EDF, wd_EFD):
    """Every expert on every token, weighted by the gates: ``[N, D]`` and counts ``[E]``."""
    e = wg_EDF.shape[0]
    gate_NE = jnp.sum(jax.nn.one_hot(experts_NK, e, dtype=jnp.float32) * gates_NK[..., None], 1)
    h = jax.nn.silu(jnp.einsum("nd,edf->enf", x_ND, wg_EDF)) * \
        jnp.einsum("nd,edf->enf", x_ND, wu_EDF)
    y_END = jnp.einsum("enf,efd->end", h, wd_EFD)
    return (jnp.einsum("end,ne->nd", y_END.astype(jnp.float32), gate_NE),
            routing.expert_counts(experts_NK, e))


DISPATCH = {"ragged": dispatch_ragged, "dense": dispatch_dense}


class MoE(nnx.Module):
    """``y_BTD = MoE(cfg)(x_BTD)``; :meth:`forward` also returns the router statistics."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        m = cfg.moe
        d, f, e = cfg.d_model, expert_dim(cfg), int(m.n_experts)
        self.n_experts, self.top_k = e, int(m.top_k)
        self.score, self.normalize = str(m.score), bool(m.normalize)
        self.route_scale = float(m.route_scale)
        self.bias_update_rate = float(m.bias_update_rate)
        self.aux_loss_coef = float(m.aux_loss_coef)
        self.implementation = str(m.implementation)
        self.dtype = jnp.dtype(cfg.dtype)
        out_scale = (2 * cfg.n_layers) ** -0.5
        self.router = _matrix(rngs, d, (d, e), ("embed", "expert"))
        self.router_bias = RouterBias(jnp.zeros((e,), jnp.float32), logical_axes=("expert",))
        self.gate = _matrix(rngs, d, (e, d, f), ("expert", "embed", "mlp"), experts=True)
        self.up = _matrix(rngs, d, (e, d, f), ("expert", "embed", "mlp"), experts=True)
        self.down = _matrix(rngs, f, (e, f, d), ("expert", "mlp", "embed"), experts=True,
                            scale=out_scale)
        self.shared = (layers.SwiGLU(d, int(m.n_shared) * f, rngs=rngs, dtype=self.dtype,
                                     out_scale=out_scale) if m.n_shared else None)

    def route(self, x_ND):
        """``(experts_NK, gates_NK, scores_NE)`` of tokens ``x_ND``."""
        logits = x_ND.astype(jnp.float32) @ self.router[...]
        s = routing.scores(logits, self.score)
        experts, gates = routing.choose(s, self.router_bias[...], self.top_k,
                                        normalize=self.normalize, route_scale=self.route_scale)
        return experts, gates, s

    def forward(self, x_BTD):
        """``(y_BTD, stats)`` with ``stats = {"load" [E], "balance" [B], "objective" [B],
        "dropped" []}`` (module docstring)."""
        b, t, d = x_BTD.shape
        x_ND = x_BTD.reshape(b * t, d)
        experts, gates, s = self.route(x_ND)
        w = [p[...].astype(self.dtype) for p in (self.gate, self.up, self.down)]
        routed, counts = DISPATCH[self.implementation](x_ND.astype(self.dtype), experts, gates, *w)
        y = routed.reshape(b, t, d).astype(x_BTD.dtype)
        if self.shared is not None:
            y = y + self.shared(x_BTD)
        balance = routing.sequence_balance_loss(s.reshape(b, t, -1),
                                                experts.reshape(b, t, self.top_k))
        stats = {"load": counts.astype(jnp.float32), "balance": balance,
                 "objective": self.aux_loss_coef * balance,
                 "dropped": (b * t * self.top_k - jnp.sum(counts)).astype(jnp.float32)}
        return y, stats

    def __call__(self, x_BTD):
        return self.forward(x_BTD)[0]

    def update_bias(self, load_E) -> None:
        """One step of the auxiliary-loss-free balancing (no-op at rate 0)."""
        if self.bias_update_rate > 0:
            self.router_bias[...] = routing.bias_step(self.router_bias[...], load_E,
                                                      self.bias_update_rate)
