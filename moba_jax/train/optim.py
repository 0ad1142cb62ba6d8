"""Optimizers and learning-rate schedules, each schedule spanning exactly the run's budget.

Optimizers (``train.optimizer``):

- ``"adamw"`` (default): AdamW on every parameter; weight decay on matrices only
  (:func:`decay_mask`).
- ``"muon"``: Muon (``optax.contrib.muon``) on the hidden matmul weights, AdamW on
  the rest, as Moonlight (Liu et al. 2025, "Muon is Scalable for LLM Training",
  arXiv 2502.16982) trains its models and Kimi Linear after it:
  * Muon gets every :class:`moba_jax.layers.Dense` kernel except those with a
    ``vocab`` axis (the output head); the kernel's input axes are the reduction axes
    of the orthogonalised matrix, its output axes the output (multi-axis kernels
    such as ``W_q [d, heads, head_dim]`` are one ``d x (heads * head_dim)`` matrix;
    leading ``batch_dims`` axes, e.g. experts, are orthogonalised one by one);
  * AdamW gets the embedding, the output head, norm scales, biases and every other
    non-matmul parameter (KDA's decay and short-convolution weights);
  * update-RMS matching: Muon's orthogonalised update is scaled by
    ``train.muon_rms * sqrt(max(fan_in, fan_out))`` (Moonlight's 0.2, the RMS of a
    typical AdamW update), so one learning rate and one weight decay serve both
    (``consistent_rms`` of optax's Muon);
  * weight decay ``train.weight_decay`` on Muon's matrices (Moonlight: essential at
    scale) and on AdamW's matrices (:func:`decay_mask`); Nesterov momentum
    ``train.muon_beta`` (0.95) and ``train.muon_ns_steps`` (5) Newton-Schulz steps.

Schedules (``train.schedule``):

- ``"cosine"`` (default): linear warm-up to the peak, cosine decay to
  ``final_lr_frac * peak`` at the run's last step;
- ``"wsd"``: warmup-stable-decay: linear warm-up, the peak held, then a linear decay
  to ``final_lr_frac * peak`` over the last ``train.decay_frac`` of the steps
  (Hu et al. 2024, MiniCPM; Moonlight's and Kimi's pre-training schedules).
"""
from __future__ import annotations

import jax
import optax
from optax.contrib import MuonDimensionNumbers

OPTIMIZERS = ("adamw", "muon")
SCHEDULES = ("cosine", "wsd")


def lr_schedule(peak_lr: float, total_steps: int, warmup_frac: float, final_lr_frac: float,
                kind: str = "cosine", decay_frac: float = 0.2):
    """The learning rate per step; every schedule ends exactly at ``total_steps``: a run's
    schedule always spans its own token budget (a run cut short is not a compute-optimal
    point)."""
    warmup = min(max(1, int(round(warmup_frac * total_steps))), total_steps)
    end = final_lr_frac * peak_lr
    if kind == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=peak_lr, warmup_steps=warmup,
            decay_steps=max(total_steps, warmup + 1), end_value=end)
    if kind == "wsd":
        decay = max(1, int(round(decay_frac * total_steps)))
        stable_end = max(warmup, total_steps - decay)
        return optax.join_schedules(
            [optax.linear_schedule(0.0, peak_lr, warmup), optax.constant_schedule(peak_lr),
             optax.linear_schedule(peak_lr, end, max(1, total_steps - stable_end))],
            [warmup, stable_end])
    raise ValueError(f"train.schedule={kind!r}: choose one of {SCHEDULES}")


def _is_meta(x) -> bool:
    return isinstance(x, dict) and "logical_axes" in x


def decay_mask(params, metadata) -> dict:
    """Weight decay applies to matrices only, never to vectors (norm scales,
    biases, decay parameters) nor to parameters tagged ``weight_decay=False``."""
    return jax.tree.map(lambda p, m: p.ndim >= 2 and m.get("weight_decay", True),
                        params, metadata, is_leaf=_is_meta)


def muon_dimensions(params, metadata):
    """Per parameter: Muon's :class:`MuonDimensionNumbers` for a hidden matmul weight
    (a Dense kernel, tagged ``in_dims``, without a ``vocab`` axis), else ``None``."""
    def one(p, m):
        n_in = m.get("in_dims")
        if n_in is None or "vocab" in m["logical_axes"]:
            return None
        b = int(m.get("batch_dims", 0))
        return MuonDimensionNumbers(tuple(range(b, b + n_in)), tuple(range(b + n_in, p.ndim)))
    return jax.tree.map(one, params, metadata, is_leaf=_is_meta)


def optimizer_labels(params, metadata):
    """``"muon"`` or ``"adamw"`` per parameter, as ``train.optimizer="muon"`` splits them."""
    dims = muon_dimensions(params, metadata)
    return jax.tree.map(lambda d: "adamw" if d is None else "muon", dims,
                        is_leaf=lambda x: x is None or isinstance(x, MuonDimensionNumbers))


def _adamw(schedule, t, params, metadata):
    return optax.adamw(schedule, b1=t.b1, b2=t.b2, eps=t.eps, weight_decay=t.weight_decay,
                       mask=decay_mask(params, metadata))


def make_optimizer(train_cfg, total_steps: int, params, metadata):
    t = train_cfg
    schedule = lr_schedule(t.lr, total_steps, t.warmup_frac, t.final_lr_frac,
                           str(t.get("schedule", "cosine")), float(t.get("decay_frac", 0.2)))
    kind = str(t.get("optimizer", "adamw"))
    if kind == "adamw":
        update = _adamw(schedule, t, params, metadata)
    elif kind == "muon":
        dims = muon_dimensions(params, metadata)
        muon = optax.contrib.muon(
            schedule, beta=float(t.get("muon_beta", 0.95)),
            ns_steps=int(t.get("muon_ns_steps", 5)), nesterov=True,
            weight_decay=t.weight_decay, consistent_rms=float(t.get("muon_rms", 0.2)),
            muon_weight_dimension_numbers=dims)
        update = optax.partition({"muon": muon, "adamw": _adamw(schedule, t, params, metadata)},
                                 optimizer_labels(params, metadata))
    else:
        raise ValueError(f"train.optimizer={kind!r}: choose one of {OPTIMIZERS}")
    tx = optax.chain(
        optax.clip_by_global_norm(t.grad_clip) if t.grad_clip > 0 else optax.identity(), update)
    return tx, schedule

