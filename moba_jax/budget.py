"""Run length from a compute budget: the one place steps are derived.

A run's length is set by exactly one of ``train.budget_flops`` (FLOPs in
``train.budget_convention``), ``train.tokens`` or ``train.steps``; everything
else (steps, tokens, schedule length, evaluation points) follows from it.
"""
from __future__ import annotations

import dataclasses

from moba_jax import accounting
from moba_jax.attention import get_attention
from moba_jax.model import layer_kinds


class RunConfigError(ValueError):
    """A run config the trainer cannot take (message names the field and the fix)."""


@dataclasses.dataclass(frozen=True)
class RunLength:
    """Steps, tokens and FLOPs of a run.

    A run has one or two *phases*: with ``train.switch_to_full_at = f`` (MoBA's
    hybrid recipe) every layer whose kind has a ``switch_target`` (MoBA: full
    attention) runs as that kind from step ``switch_step = round(f * steps)`` on,
    and FLOPs per token change there.
    """
    steps: int
    tokens_per_step: int
    tokens: int
    flops_per_token: dict[str, float]    # training FLOPs per token (first phase), by convention
    budget_flops: float | None
    convention: str
    switch_step: int | None = None       # first step of the second phase
    flops_per_token_after: dict[str, float] | None = None

    def flops_at(self, step: int) -> dict[str, float]:
        """Cumulative training FLOPs after ``step`` steps, by convention."""
        if self.switch_step is None or step <= self.switch_step:
            return {c: step * self.tokens_per_step * f for c, f in self.flops_per_token.items()}
        before = self.switch_step * self.tokens_per_step
        after = (step - self.switch_step) * self.tokens_per_step
        return {c: before * f + after * self.flops_per_token_after[c]
                for c, f in self.flops_per_token.items()}

    def mean_flops_per_token(self) -> dict[str, float]:
        total = self.flops_at(self.steps)
        return {c: v / max(self.tokens, 1) for c, v in total.items()}


def switched_model_config(model_cfg):
    """The model config of a hybrid schedule's second phase.

    Every layer whose kind names a ``switch_target`` (MoBA: ``"full"``) runs as that
    kind; the others stay. The pattern is written out layer by layer, so hybrids
    (``full_attention_last_n``, cycled patterns) keep every other layer as it was.
    """
    cfg = model_cfg.copy_and_resolve_references()
    kinds = layer_kinds(cfg)
    cfg.attention_pattern = ",".join(get_attention(k).switch_target or k for k in kinds)
    cfg.full_attention_last_n = 0
    return cfg


def switchable_kinds(model_cfg) -> list[str]:
    """The model's kinds that a hybrid schedule can switch (those with a ``switch_target``)."""
    return [k for k in dict.fromkeys(layer_kinds(model_cfg)) if get_attention(k).switch_target]


def run_length(model_cfg, train_cfg) -> RunLength:
    frac = float(train_cfg.get("switch_to_full_at", 0.0) or 0.0)
    if not 0.0 <= frac < 1.0:
        raise RunConfigError(f"train.switch_to_full_at={frac} must be in [0, 1) (0 = never; "
                             "0.9 = MoBA for the first 90% of tokens, full attention after)")
    if frac > 0 and not switchable_kinds(model_cfg):
        raise RunConfigError(
            "train.switch_to_full_at is set but no layer of the model can switch: "
            f"attention_pattern={model_cfg.attention_pattern!r} has no kind with a switch target "
            "(e.g. 'moba' switches to 'full'); unset train.switch_to_full_at or use such a kind")
    base = _single_phase_length(model_cfg, train_cfg)
    if frac == 0.0:
        return base
    after = accounting.train_flops_per_token_all(switched_model_config(model_cfg),
                                                 int(train_cfg.seq_len))
    conv, tps = base.convention, base.tokens_per_step

    def make(steps):
        return dataclasses.replace(base, steps=steps, tokens=steps * tps,
                                   switch_step=int(round(frac * steps)),
                                   flops_per_token_after=after)
    if base.budget_flops is None:
        return make(base.steps)
    mean = frac * base.flops_per_token[conv] + (1 - frac) * after[conv]
    steps = int(base.budget_flops // (mean * tps)) + 1
    while steps > 0 and make(steps).flops_at(steps)[conv] > base.budget_flops:
        steps -= 1
    if steps < 1:
        raise RunConfigError(f"train.budget_flops={base.budget_flops:.3g} is smaller than one step; "
                             "raise the budget")
    return make(steps)


def _single_phase_length(model_cfg, train_cfg) -> RunLength:
    seq_len, batch = int(train_cfg.seq_len), int(train_cfg.global_batch)
    if seq_len <= 0:
        raise RunConfigError(f"train.seq_len={seq_len} must be positive")
    if batch <= 0:
        raise RunConfigError(f"train.global_batch={batch} must be positive")
    tps = seq_len * batch
    fpt = accounting.train_flops_per_token_all(model_cfg, seq_len)
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
