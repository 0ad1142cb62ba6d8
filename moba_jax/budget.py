"""Run length from a compute budget: the one place steps are derived.

A run's length is set by exactly one of ``train.budget_flops`` (FLOPs in
``train.budget_convention``), ``train.tokens`` or ``train.steps``; everything
else (steps, tokens, schedule length, evaluation points) follows from it.
"""
from __future__ import annotations

import dataclasses

from analysis import flops


class RunConfigError(ValueError):
    """A run config the trainer cannot take (message names the field and the fix)."""


@dataclasses.dataclass(frozen=True)
class RunLength:
    steps: int
    tokens_per_step: int
    tokens: int
    flops_per_token: dict[str, float]    # training FLOPs per token, by convention
    budget_flops: float | None
    convention: str

    def flops_at(self, step: int) -> dict[str, float]:
        tokens = step * self.tokens_per_step
        return {c: tokens * f for c, f in self.flops_per_token.items()}


def flops_per_token_all(model_cfg, seq_len: int) -> dict[str, float]:
    return {c: flops.train_flops_per_token(model_cfg, seq_len, c) for c in flops.CONVENTIONS}


def run_length(model_cfg, train_cfg) -> RunLength:
    seq_len, batch = int(train_cfg.seq_len), int(train_cfg.global_batch)
    if seq_len <= 0:
        raise RunConfigError(f"train.seq_len={seq_len} must be positive")
    if batch <= 0:
        raise RunConfigError(f"train.global_batch={batch} must be positive")
    tps = seq_len * batch
    fpt = flops_per_token_all(model_cfg, seq_len)
    set_fields = [f for f in ("budget_flops", "tokens", "steps") if float(train_cfg.get(f, 0) or 0) > 0]
    if len(set_fields) != 1:
        raise RunConfigError(
            "set exactly one of train.budget_flops, train.tokens, train.steps (got "
            f"{set_fields or 'none'}); e.g. --config.train.budget_flops=1e13")
    conv = str(train_cfg.get("budget_convention", "exact"))
    if conv not in fpt:
        raise RunConfigError(f"train.budget_convention={conv!r}: choose one of {tuple(fpt)}")
    budget = None
    if set_fields[0] == "budget_flops":
        budget = float(train_cfg.budget_flops)
        per_step = fpt[conv] * tps
        steps = int(budget // per_step)
        if steps < 1:
            raise RunConfigError(
                f"train.budget_flops={budget:.3g} is smaller than one step "
                f"({per_step:.3g} {conv} FLOPs for {batch} x {seq_len} tokens); raise the "
                "budget or lower train.global_batch / train.seq_len")
    elif set_fields[0] == "tokens":
        steps = int(train_cfg.tokens) // tps
        if steps < 1:
            raise RunConfigError(f"train.tokens={train_cfg.tokens} is fewer than one step "
                                 f"({tps} tokens); raise it")
    else:
        steps = int(train_cfg.steps)
    return RunLength(steps, tps, steps * tps, fpt, budget, conv)


def eval_steps(total_steps: int, n_points: int) -> list[int]:
    """Geometrically spaced evaluation steps from 1 to ``total_steps`` (always
    including the last), so every run has a loss-vs-compute curve."""
    if n_points <= 1 or total_steps <= 1:
        return [total_steps]
    pts = {max(1, round(total_steps ** (i / (n_points - 1)))) for i in range(n_points)}
    pts.add(total_steps)
    return sorted(p for p in pts if p <= total_steps)
