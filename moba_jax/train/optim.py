"""AdamW with warmup + cosine decay spanning exactly the run's own budget."""
from __future__ import annotations

import jax
import optax


def lr_schedule(peak_lr: float, total_steps: int, warmup_frac: float, final_lr_frac: float):
    """Linear warmup to ``peak_lr`` then cosine decay to ``final_lr_frac * peak_lr``.

    The schedule ends exactly at ``total_steps``: a run's schedule always spans
    its own token budget (a run cut short is not a compute-optimal point).
    """
    warmup = max(1, int(round(warmup_frac * total_steps)))
    warmup = min(warmup, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=peak_lr, warmup_steps=warmup,
        decay_steps=max(total_steps, warmup + 1), end_value=final_lr_frac * peak_lr)


def decay_mask(params, metadata) -> dict:
    """Weight decay applies to matrices only, never to vectors (norm scales,
    biases, decay parameters) nor to parameters tagged ``weight_decay=False``."""
    return jax.tree.map(lambda p, m: p.ndim >= 2 and m.get("weight_decay", True),
                        params, metadata, is_leaf=lambda x: isinstance(x, dict) and "logical_axes" in x)


def make_optimizer(train_cfg, total_steps: int, params, metadata):
    schedule = lr_schedule(train_cfg.lr, total_steps, train_cfg.warmup_frac,
                           train_cfg.final_lr_frac)
    tx = optax.chain(
        optax.clip_by_global_norm(train_cfg.grad_clip) if train_cfg.grad_clip > 0
        else optax.identity(),
        optax.adamw(schedule, b1=train_cfg.b1, b2=train_cfg.b2, eps=train_cfg.eps,
                    weight_decay=train_cfg.weight_decay, mask=decay_mask(params, metadata)),
    )
    return tx, schedule
