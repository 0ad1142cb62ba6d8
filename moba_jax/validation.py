"""One validation pass over a run config, before any work is done.

``experiments.train``, ``experiments.sweep`` (for every planned run, including
``--dry_run`` and ``--status``), ``experiments.evaluate`` and ``experiments.generate``
call :func:`check_run_config` before they build a model, touch data or write a file.
Each problem raises a :class:`ConfigError` whose message is one line,
``<field>: <problem>; <what to do>``, which the entry points print as
``error: ...`` and exit 2 (``experiments/common.py``). Unknown fields are caught
earlier, by the flag parser (ml_collections configs are locked).

What is checked: the training fields' ranges (learning rate > 0, run length > 0,
fractions in their intervals, ...), the model's shape (positive sizes, grouped-query
heads, rotary head size), every attention kind's own options through the kind's
``check_options`` (:mod:`moba_jax.attention.registry`), the evaluation fields, and
the mesh's axis sizes and sharding rules.
"""
from __future__ import annotations

import math
from typing import Any


class ConfigError(ValueError):
    """A config value the code cannot take: ``field``, what is wrong, and what to do."""

    def __init__(self, field: str, problem: str, fix: str):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}; {fix}")

    def moved(self, field: str, context: str = "") -> "ConfigError":
        """The same problem reported under another field name (e.g. the sweep field
        a run's value came from), with ``context`` (e.g. the run) after the problem."""
        problem = f"{self.problem} ({context})" if context else self.problem
        fix = self.fix.replace(f"--config.{self.field}", f"--config.{field}")
        return ConfigError(field, problem, fix)


def _number(field: str, value: Any, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise ConfigError(field, f"{value!r} is not {kind}", f"give {kind}")
    if not math.isfinite(float(value)):
        raise ConfigError(field, f"{value!r} is not finite", "give a finite number")
    return int(value) if integer else float(value)


def at_least(field: str, value: Any, low: float, fix: str, *, integer: bool = False) -> None:
    """Raises unless ``value >= low``."""
    v = _number(field, value, integer)
    if v < low:
        what = "negative" if low == 0 else f"below {low:g}"
        raise ConfigError(field, f"{value!r} is {what}", fix)


def positive(field: str, value: Any, fix: str, *, integer: bool = False) -> None:
    """Raises unless ``value > 0``."""
    v = _number(field, value, integer)
    if v <= 0:
        raise ConfigError(field, f"{value!r} is not positive", fix)


def in_interval(field: str, value: Any, low: float, high: float, *, closed_high: bool,
                fix: str) -> None:
    """Raises unless ``low <= value < high`` (``<= high`` when ``closed_high``)."""
    v = _number(field, value)
    if not (low <= v and (v <= high if closed_high else v < high)):
        bracket = "]" if closed_high else ")"
        raise ConfigError(field, f"{value!r} is outside [{low:g}, {high:g}{bracket}", fix)


def one_of(field: str, value: Any, choices) -> None:
    """Raises unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(field, f"{value!r} is not one of {', '.join(map(repr, choices))}",
                          f"choose one of them, e.g. --config.{field}={choices[0]}")


def check_train_config(t) -> None:
    """The ``train`` fields that need no model: ranges of rates, fractions and lengths."""
    from moba_jax.units import CONVENTIONS
    for f in ("seq_len", "global_batch", "grad_accum", "log_every", "checkpoint_every"):
        positive(f"train.{f}", t[f], f"set it to 1 or more, e.g. --config.train.{f}=1",
                 integer=True)
    positive("train.lr", t.lr, "give a learning rate above 0 (a negative one ascends the "
             "loss), e.g. --config.train.lr=3e-3")
    for f in ("steps", "tokens"):
        at_least(f"train.{f}", t.get(f, 0), 0, f"give a positive run length, e.g. "
                 f"--config.train.{f}={'200' if f == 'steps' else '1000000'} (0: unset)",
                 integer=True)
    at_least("train.budget_flops", t.get("budget_flops", 0.0), 0,
             "give a positive FLOP budget, e.g. --config.train.budget_flops=1e13 (0: unset)")
    one_of("train.budget_convention", str(t.get("budget_convention", "exact")), CONVENTIONS)
    in_interval("train.warmup_frac", t.warmup_frac, 0, 1, closed_high=False,
                fix="give the warm-up as a fraction of the run in [0, 1), e.g. 0.05")
    in_interval("train.final_lr_frac", t.final_lr_frac, 0, 1, closed_high=True,
                fix="give the final learning rate as a fraction of the peak in [0, 1]")
    in_interval("train.switch_to_full_at", t.get("switch_to_full_at", 0.0), 0, 1,
                closed_high=False, fix="give a fraction of the run in [0, 1) (0: never switch)")
    for f in ("b1", "b2"):
        in_interval(f"train.{f}", t[f], 0, 1, closed_high=False,
                    fix="Adam's moment decay lies in [0, 1), e.g. 0.9 or 0.95")
    positive("train.eps", t.eps, "give a small positive epsilon, e.g. 1e-8")
    at_least("train.weight_decay", t.weight_decay, 0, "give a weight decay >= 0 (0: none)")
    at_least("train.grad_clip", t.grad_clip, 0, "give a global-norm clip >= 0 (0: no clipping)")
    at_least("train.peak_flops_per_device", t.get("peak_flops_per_device", 0.0), 0,
             "give the device's peak FLOP/s, or 0 to look it up from the device kind")
    if t.global_batch % t.grad_accum:
        raise ConfigError("train.grad_accum", f"{t.grad_accum} does not divide "
                          f"train.global_batch={t.global_batch}",
                          "choose a divisor of the global batch")


def check_mesh_config(mesh) -> None:
    """The mesh's axis sizes (``data`` may be -1: every device the others leave) and its
    rules table; whether the product fits the devices is checked when the mesh is built
    (:func:`moba_jax.sharding.make_mesh`), so a plan can be printed on a smaller machine."""
    from moba_jax.sharding import rules_from_config
    for f in ("fsdp", "tensor"):
        positive(f"mesh.{f}", mesh[f], f"set it to 1 or more (1: no {f} sharding)", integer=True)
    data = _number("mesh.data", mesh.data, integer=True)
    if data == 0 or data < -1:
        raise ConfigError("mesh.data", f"{data} is not a device count",
                          "give a positive number, or -1 for every device the other axes leave")
    rules_from_config(mesh.get("rules"))


def check_eval_config(e) -> None:
    """A run config's ``eval`` block: how many validation points and batches."""
    at_least("eval.points", e.points, 0, "give the number of validation points (0: none)",
             integer=True)
    positive("eval.batches", e.batches, "give at least one validation batch", integer=True)


def check_model_options(model_cfg) -> None:
    """Every layer kind's own options, through the kind's ``check_options``."""
    from moba_jax.attention.registry import get_attention
    from moba_jax.model import layer_kinds
    for kind in dict.fromkeys(layer_kinds(model_cfg)):
        check = getattr(get_attention(kind), "check_options", None)
        if check is not None:
            check(model_cfg)


def check_run_config(cfg) -> None:
    """Validates a whole run config (``model``, ``train``, ``eval``, ``mesh``) in one pass
    before any work; raises :class:`ConfigError` (or the model's and data's own one-line
    errors) for the first problem."""
    from moba_jax.model import validate_model_config
    check_train_config(cfg.train)
    validate_model_config(cfg.model)
    check_model_options(cfg.model)
    if "eval" in cfg:
        check_eval_config(cfg.eval)
    if "mesh" in cfg:
        check_mesh_config(cfg.mesh)


def _list(field: str, value, integer: bool) -> list:
    out = []
    for x in str(value).split(","):
        if x.strip():
            try:
                out.append(int(x) if integer else float(x))
            except ValueError:
                kind = "integers" if integer else "numbers"
                raise ConfigError(field, f"{x.strip()!r} in {str(value)!r} is not a number",
                                  f"give comma-separated {kind}, e.g. "
                                  f"{'256,512' if integer else '0,0.5,1'}") from None
    return out


def check_eval_request(e) -> None:
    """The settings of ``experiments.evaluate`` (:func:`moba_jax.evaluation.default_eval_config`)."""
    for f in ("seq_len", "bucket_size", "trailing", "max_docs"):
        at_least(f"config.{f}", e[f], 0, f"give a size >= 0 (0: the default), e.g. "
                 f"--config.{f}=0", integer=True)
    for f in ("batch_size", "probe_trials"):
        positive(f"config.{f}", e[f], f"set it to 1 or more, e.g. --config.{f}=8", integer=True)
    for f in ("needle_lengths", "mqar_lengths", "mqar_pairs"):
        if any(n <= 0 for n in _list(f"config.{f}", e[f], integer=True)):
            raise ConfigError(f"config.{f}", f"{e[f]!r} holds a value below 1",
                              "give positive integers, comma-separated")
    if any(not 0 <= d <= 1 for d in _list("config.needle_depths", e.needle_depths, False)):
        raise ConfigError("config.needle_depths", f"{e.needle_depths!r} holds a depth outside "
                          "[0, 1]", "give fractions of the context, e.g. 0,0.25,0.5,0.75,1")
