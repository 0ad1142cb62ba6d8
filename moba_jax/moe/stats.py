"""Router statistics: from the MoE layers' outputs to the training objective and metrics.

The model's auxiliary output (:meth:`moba_jax.model.TransformerLM.forward_with_aux`) is
``{}`` for a dense model, else :func:`stack` of the MoE layers' statistics. The train
step turns it into additive sums (:func:`batch_sums`, summed over micro-batches when
gradients are accumulated) and, once per step, into metrics (:func:`metrics`):

- ``moe_aux_loss``: the balance loss, averaged over the sequences (weighted by their
  loss tokens) and the MoE layers (1.0: perfectly balanced);
- ``moe_load_max_over_mean``: per layer the most loaded expert's assignments over the
  mean, averaged over the MoE layers (Wang et al.'s MaxVio + 1, arXiv 2408.15664);
- ``moe_load``: per MoE layer, each expert's fraction of the assignments;
- ``moe_dropped``: assignments not computed (0 with dropless dispatch).

The training objective is ``sum(token losses) + sum_seq n_seq * sum_layers
aux_loss_coef * balance_seq``, divided by the loss tokens like the loss itself, so the
balance term is the token-weighted mean over sequences and gradient accumulation
reproduces the full batch's update.
"""
from __future__ import annotations

import jax.numpy as jnp


def stack(layer_stats: list[dict]) -> dict:
    """The model's auxiliary output from its MoE layers' statistics, in layer order:
    ``moe_load [L, E]``, ``moe_balance [L, B]``, ``moe_objective [B]`` (summed over
    layers), ``moe_dropped []``."""
    if not layer_stats:
        return {}
    return {"moe_load": jnp.stack([s["load"] for s in layer_stats]),
            "moe_balance": jnp.stack([s["balance"] for s in layer_stats]),
            "moe_objective": sum(s["objective"] for s in layer_stats),
            "moe_dropped": sum(s["dropped"] for s in layer_stats)}


def batch_sums(aux: dict, mask_BT) -> tuple[jnp.ndarray, dict]:
    """``(objective term, sums)`` of one (micro-)batch: the term to add to the summed
    token loss, and the additive statistics behind :func:`metrics`."""
    n_B = jnp.sum(mask_BT, axis=1)
    sums = {"moe_load": aux["moe_load"],
            "moe_balance": jnp.sum(aux["moe_balance"] * n_B[None, :], axis=1),   # [L]
            "moe_dropped": aux["moe_dropped"]}
    return jnp.sum(aux["moe_objective"] * n_B), sums


def metrics(sums: dict, n_tokens) -> dict:
    """Per-step metrics from the step's summed statistics (module docstring)."""
    load = sums["moe_load"]
    frac = load / jnp.maximum(jnp.sum(load, axis=1, keepdims=True), 1.0)
    return {"moe_aux_loss": jnp.mean(sums["moe_balance"]) / n_tokens,
            "moe_load_max_over_mean": jnp.mean(jnp.max(load, 1) / jnp.maximum(jnp.mean(load, 1), 1e-9)),
            "moe_load": frac,
            "moe_dropped": sums["moe_dropped"]}
