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

from moba_jax.attention.registry import get_attention
from moba_jax.checks import (ConfigError, at_least, in_interval, number, number_list, one_of,
                             positive)
from moba_jax.model import layer_kinds, validate_model_config
from moba_jax.sharding import rules_from_config
from moba_jax.train.optim import OPTIMIZERS, SCHEDULES
from moba_jax.units import CONVENTIONS


def check_train_config(t) -> None:
    """The ``train`` fields that need no model: ranges of rates, fractions and lengths."""
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
    one_of("train.optimizer", str(t.get("optimizer", "adamw")), OPTIMIZERS)
    one_of("train.schedule", str(t.get("schedule", "cosine")), SCHEDULES)
    in_interval("train.decay_frac", t.get("decay_frac", 0.2), 0, 1, closed_high=True,
                fix="give the decaying share of a wsd schedule in (0, 1], e.g. 0.2")
    if not float(t.get("decay_frac", 0.2)) > 0:
        raise ConfigError("train.decay_frac", f"{t.decay_frac} leaves no decay",
                          "give the decaying share of a wsd schedule in (0, 1], e.g. 0.2")
    in_interval("train.muon_beta", t.get("muon_beta", 0.95), 0, 1, closed_high=False,
                fix="Muon's momentum lies in [0, 1), e.g. 0.95")
    positive("train.muon_ns_steps", t.get("muon_ns_steps", 5), "give the Newton-Schulz "
             "iterations, e.g. 5", integer=True)
    positive("train.muon_rms", t.get("muon_rms", 0.2), "give Muon's update RMS, e.g. 0.2 "
             "(Moonlight's match to AdamW)")
    at_least("train.peak_flops_per_device", t.get("peak_flops_per_device", 0.0), 0,
             "give the device's peak FLOP/s, or 0 to look it up from the device kind")
    at_least("train.prefetch", t.get("prefetch", 2), 0, "give the batches to send to the "
             "devices ahead of their step, e.g. 2 (0: none)", integer=True)
    if t.global_batch % t.grad_accum:
        raise ConfigError("train.grad_accum", f"{t.grad_accum} does not divide "
                          f"train.global_batch={t.global_batch}",
                          "choose a divisor of the global batch")


def check_mesh_config(mesh) -> None:
    """The mesh's axis sizes (``data`` may be -1: every device the others leave) and its
    rules table; whether the product fits the devices is checked when the mesh is built
    (:func:`moba_jax.sharding.make_mesh`), so a plan can be printed on a smaller machine."""
    for f in ("fsdp", "tensor"):
        positive(f"mesh.{f}", mesh[f], f"set it to 1 or more (1: no {f} sharding)", integer=True)
    data = number("mesh.data", mesh.data, integer=True)
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
    for kind in dict.fromkeys(layer_kinds(model_cfg)):
        check = getattr(get_attention(kind), "check_options", None)
        if check is not None:
            check(model_cfg)


def check_run_config(cfg) -> None:
    """Validates a whole run config (``model``, ``train``, ``eval``, ``mesh``) in one pass
    before any work; raises :class:`ConfigError` (or the model's and data's own one-line
    errors) for the first problem."""
    check_train_config(cfg.train)
    validate_model_config(cfg.model)
    check_model_options(cfg.model)
    if "eval" in cfg:
        check_eval_config(cfg.eval)
    if "mesh" in cfg:
        check_mesh_config(cfg.mesh)


def check_eval_request(e) -> None:
    """The settings of ``experiments.evaluate`` (:func:`moba_jax.evaluation.default_eval_config`)."""
    for f in ("seq_len", "bucket_size", "trailing", "max_docs"):
        at_least(f"config.{f}", e[f], 0, f"give a size >= 0 (0: the default), e.g. "
                 f"--config.{f}=0", integer=True)
    for f in ("batch_size", "probe_trials"):
        positive(f"config.{f}", e[f], f"set it to 1 or more, e.g. --config.{f}=8", integer=True)
    for f in ("needle_lengths", "mqar_lengths", "mqar_pairs"):
        if any(n <= 0 for n in number_list(f"config.{f}", e[f], integer=True)):
            raise ConfigError(f"config.{f}", f"{e[f]!r} holds a value below 1",
                              "give positive integers, comma-separated")
    if any(not 0 <= d <= 1 for d in number_list("config.needle_depths", e.needle_depths, False)):
        raise ConfigError("config.needle_depths", f"{e.needle_depths!r} holds a depth outside "
                          "[0, 1]", "give fractions of the context, e.g. 0,0.25,0.5,0.75,1")
