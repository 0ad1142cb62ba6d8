"""A sweep config expanded into its runs: one :class:`RunPlan` per arm x (size, budget).

A sweep config (see ``configs/scaling.py``) holds a ``base`` run config and:

- ``arms``: comma-separated arm names, each defined in ``arm_defs.<name>`` as
  model-config overrides (``attention_pattern``, ``full_attention_last_n``,
  ``attention.<kind>.*``) plus optional ``train`` overrides and an optional
  ``display_name`` and ``colour`` (a matplotlib colormap name) for figures and
  reports; without them the attention registry names and colours the arm from
  its layers' kinds (:func:`moba_jax.attention.describe`);
- ``sizes``: comma-separated size names defined in ``size_defs.<name>`` (model
  shape fields plus optional ``train`` overrides per size, e.g. the papers' per-size
  ``train.lr`` and ``train.global_batch``; a bare ``lr`` is short for ``train.lr``);
  a size's train overrides win over an arm's;
- ``budgets``: comma-separated FLOP budgets in ``budget_convention`` (one per
  size, paired in order, or every size x every budget with ``grid=True``);
- or instead ``tokens``: comma-separated training tokens, one per size, given to
  every arm alike (the papers' design: equal data per size, compute on the 6ND
  axis; leave ``budgets`` empty);
- ``seeds`` (optional): comma-separated seeds; each arm x size runs once per seed
  (``train.seed`` sets the initialisation and the data order), named ``..._seed<k>``.

With budgets, each run's tokens follow from its budget and its own FLOPs per
token, so every arm gets exactly the same compute at each point; with tokens,
each run's budget is its tokens times its own FLOPs per token.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json

import ml_collections

from moba_jax import accounting, units
from moba_jax.attention import describe
from moba_jax.budget import RunConfigError, run_length
from moba_jax.model import layer_kinds
from moba_jax.validation import ConfigError, check_run_config
from moba_jax.train.metrics import LOGGING_FIELDS

# Keys of ``arm_defs.<arm>`` that label an arm without changing its runs.
LABEL_KEYS = ("display_name", "colour")


class SweepConfigError(ValueError):
    """A sweep config that cannot be planned (message names the field and the fix)."""


class SweepChangedError(SweepConfigError):
    """The sweep directory pins a different config; ``pinned`` is its ``sweep.json``
    record (``--retry_failed`` may accept the change, see :mod:`moba_jax.sweep.changes`)."""

    def __init__(self, message: str, pinned: dict):
        super().__init__(message)
        self.pinned = pinned


@dataclasses.dataclass
class RunPlan:
    name: str
    arm: str
    size: str
    budget_flops: float
    config: ml_collections.ConfigDict
    steps: int
    tokens: int
    n_params_nonembed: int
    n_params_activated: int     # per token (= n_params_nonembed for dense models)
    flops_per_token: dict
    arm_display: str
    arm_colour: str

    def row(self) -> dict:
        return {"run": self.name, "arm": self.arm, "arm_display": self.arm_display,
                "arm_colour": self.arm_colour, "size": self.size,
                "n_params_nonembed": self.n_params_nonembed,
                "n_params_activated": self.n_params_activated, "steps": self.steps,
                "tokens": self.tokens, "budget_flops": self.budget_flops,
                "pflops_days": units.to_pflops_days(self.budget_flops)}


def _names(field: str, value: str) -> list[str]:
    out = [v.strip() for v in str(value).split(",") if v.strip()]
    if not out:
        raise SweepConfigError(f"sweep.{field} is empty; list at least one, comma-separated")
    return out


def _numbers(cfg, field: str, example: str) -> list[float]:
    """``sweep.<field>`` as positive numbers (comma-separated)."""
    value = cfg.get(field, "")
    try:
        out = [float(b) for b in _names(field, value)]
    except ValueError:
        out = None
    if out is None or any(not b > 0 for b in out):
        raise SweepConfigError(f"sweep.{field}={value!r}: give comma-separated positive numbers "
                               f"such as {example}")
    return out


def _seeds(cfg) -> list[int | None]:
    """``sweep.seeds`` as integers >= 0, or ``[None]`` (one run per point, base seed)."""
    value = str(cfg.get("seeds", "") or "").strip()
    if not value:
        return [None]
    try:
        seeds = [int(x) for x in _names("seeds", value)]
    except ValueError:
        seeds = None
    if seeds is None or any(k < 0 for k in seeds) or len(set(seeds)) != len(seeds):
        raise SweepConfigError(f"sweep.seeds={value!r}: give distinct comma-separated integers "
                               ">= 0 such as '0,1'")
    return seeds


def _merge(dst: ml_collections.ConfigDict, overrides: dict, where: str) -> None:
    for k, v in overrides.items():
        if k not in dst:
            raise SweepConfigError(f"{where}.{k}: no such field in the run config")
        if isinstance(v, dict):
            _merge(dst[k], v, f"{where}.{k}")
        else:
            dst[k] = v


def _label(arm: str, arm_def: dict, key: str) -> str | None:
    """Pops ``arm_defs.<arm>.<key>`` (a display name or colour) from ``arm_def``."""
    value = arm_def.pop(key, None)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise SweepConfigError(f"arm_defs.{arm}.{key}={value!r}: give a non-empty string "
                               "or leave it out to take the attention registry's")
    return value


def _has(d, path: list[str]) -> bool:
    for p in path:
        if not hasattr(d, "keys") or p not in d:
            return False
        d = d[p]
    return True


def origin_field(cfg, arm: str, size: str, field: str) -> str:
    """The sweep-config field that a run's ``field`` (e.g. ``model.attention.moba.top_k``)
    takes its value from: the arm's override, the size's, or the base config."""
    head, *sub = field.split(".")
    if head == "model" and _has(cfg.arm_defs[arm], sub):
        return ".".join(["arm_defs", arm, *sub])
    if head == "model" and _has(cfg.size_defs[size], sub):
        return ".".join(["size_defs", size, *sub])
    if head == "train" and sub == ["lr"] and _has(cfg.size_defs[size], ["lr"]):
        return f"size_defs.{size}.lr"
    if head == "train" and _has(cfg.size_defs[size], ["train", *sub]):
        return ".".join(["size_defs", size, "train", *sub])
    if head == "train" and _has(cfg.arm_defs[arm], ["train", *sub]):
        return ".".join(["arm_defs", arm, "train", *sub])
    return f"base.{field}"


def plan_sweep(cfg) -> list[RunPlan]:
    """Expands a sweep config into its runs (raises :class:`SweepConfigError`)."""
    arms = _names("arms", cfg.arms)
    sizes = _names("sizes", cfg.sizes)
    by_tokens = bool(str(cfg.get("tokens", "") or "").strip())
    if by_tokens and str(cfg.get("budgets", "") or "").strip():
        raise SweepConfigError("sweep.budgets and sweep.tokens are both set; give one: budgets "
                               "(equal compute per size) or tokens (equal data per size)")
    length_field = "tokens" if by_tokens else "budgets"
    budgets = _numbers(cfg, length_field, "'2e6,8e6'" if by_tokens else "'1e12,3e12'")
    seeds = _seeds(cfg)
    if cfg.get("grid", False):
        pairs = [(s, b) for s in sizes for b in budgets]
    else:
        if len(budgets) != len(sizes):
            raise SweepConfigError(
                f"sweep.{length_field} has {len(budgets)} entries but sweep.sizes has {len(sizes)}; "
                f"give one per size or set --config.grid=True for every size x {length_field[:-1]}")
        pairs = list(zip(sizes, budgets))
    plans = []
    for arm in arms:
        if arm not in cfg.arm_defs:
            raise SweepConfigError(f"sweep.arms: unknown arm {arm!r}; defined arms: "
                                   f"{', '.join(sorted(cfg.arm_defs))}")
        for (size, budget), seed in ((p, k) for p in pairs for k in seeds):
            if size not in cfg.size_defs:
                raise SweepConfigError(f"sweep.sizes: unknown size {size!r}; defined sizes: "
                                       f"{', '.join(sorted(cfg.size_defs))}")
            run_cfg = copy.deepcopy(cfg.base)
            size_def = dict(cfg.size_defs[size].to_dict())
            size_train = size_def.pop("train", {})
            if "lr" in size_def:
                if "lr" in size_train:
                    raise SweepConfigError(f"size_defs.{size}: lr and train.lr are both set; "
                                           "give one (lr is short for train.lr)")
                size_train["lr"] = size_def.pop("lr")
            _merge(run_cfg.model, size_def, f"size_defs.{size}")
            arm_def = dict(cfg.arm_defs[arm].to_dict())
            train_over = arm_def.pop("train", {})
            display, colour = (_label(arm, arm_def, k) for k in LABEL_KEYS)
            _merge(run_cfg.model, arm_def, f"arm_defs.{arm}")
            _merge(run_cfg.train, train_over, f"arm_defs.{arm}.train")
            _merge(run_cfg.train, size_train, f"size_defs.{size}.train")
            run_cfg.train.update(budget_flops=0.0 if by_tokens else budget, tokens=0, steps=0,
                                 budget_convention=cfg.budget_convention)
            if by_tokens:
                run_cfg.train.tokens = int(budget)
            if seed is not None:
                run_cfg.train.seed = seed
            name = f"{arm}_{size}_{budget:.2g}{'tok' if by_tokens else ''}".replace("+", "")
            name += "" if seed is None else f"_seed{seed}"
            try:
                check_run_config(run_cfg)
            except ConfigError as e:
                raise e.moved(origin_field(cfg, arm, size, e.field), f"run {name}") from None
            try:
                length = run_length(run_cfg.model, run_cfg.train)
            except RunConfigError as e:
                raise SweepConfigError(f"run {arm}/{size}: {e}") from None
            kind_display, kind_colour = describe(layer_kinds(run_cfg.model))
            if by_tokens:
                budget = length.flops_at(length.steps)[cfg.budget_convention]
            plans.append(RunPlan(name, arm, size, budget, run_cfg, length.steps, length.tokens,
                                 accounting.non_embedding_params(run_cfg.model),
                                 accounting.activated_params(run_cfg.model),
                                 length.flops_per_token, display or kind_display,
                                 colour or kind_colour))
    return plans


def pinned_part(config: dict) -> dict:
    """What ``sweep.json`` pins of a sweep config (``cfg.to_dict()`` or a recorded copy),
    JSON-normalised: all of it less what changes no run, the arms' labels
    (:data:`LABEL_KEYS`) and the base's logging fields
    (:data:`moba_jax.train.metrics.LOGGING_FIELDS`, e.g. ``train.tensorboard``)."""
    d = json.loads(json.dumps(config, default=str))
    for arm_def in d.get("arm_defs", {}).values():
        for k in LABEL_KEYS:
            arm_def.pop(k, None)
    for k in LOGGING_FIELDS:
        d.get("base", {}).get("train", {}).pop(k, None)
    return d


def sweep_fingerprint(cfg) -> str:
    """Hash of the sweep config that ``sweep.json`` pins (:func:`pinned_part`)."""
    d = pinned_part(cfg.to_dict())
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


ABSENT = "(absent)"


def changed_fields(old: dict, new: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(dotted path, old value, new value)`` of every leaf that differs between two
    config dicts; a side that lacks the field has :data:`ABSENT`."""
    out = []
    for k in sorted(set(old) | set(new), key=str):
        a, b = old.get(k, ABSENT), new.get(k, ABSENT)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_fields(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((f"{prefix}{k}", a, b))
    return out


def _short(v) -> str:
    text = f"{v:g}" if isinstance(v, float) else v if v is ABSENT else json.dumps(v, default=str)
    return text if len(text) <= 24 else text[:21] + "..."


def format_fields(changes: list[tuple[str, object, object]], limit: int = 3) -> str:
    """``path: old -> new`` for the first ``limit`` changes, then ``... and N more``."""
    text = ", ".join(f"{f}: {_short(a)} -> {_short(b)}" for f, a, b in changes[:limit])
    return text + (f" ... and {len(changes) - limit} more" if len(changes) > limit else "")


def format_plan(plans: list[RunPlan], convention: str) -> str:
    """The dry-run table: one row per run: non-embedding parameters, all of them and those a
    token uses (they differ for mixture-of-experts models; 6ND counts the activated), and
    training FLOPs per token in both conventions."""
    w = max([len(p.name) for p in plans] + [4]) + 2
    head = (f"{'run':<{w}}{'N non-emb':>15}{'N activated':>15}{'tokens':>18}{'steps':>9}"
            f"{'6ND/token':>12}{'exact/token':>13}{'budget FLOPs':>14}{'PFLOP/s-days':>14}")
    lines = [f"budgets in {convention} FLOPs", head, "-" * len(head)]
    for p in plans:
        lines.append(f"{p.name:<{w}}{p.n_params_nonembed:>15,}{p.n_params_activated:>15,}"
                     f"{p.tokens:>18,}{p.steps:>9}"
                     f"{p.flops_per_token['6nd']:>12.3g}{p.flops_per_token['exact']:>13.3g}"
                     f"{p.budget_flops:>14.3g}{units.to_pflops_days(p.budget_flops):>14.3g}")
    total = sum(p.budget_flops for p in plans)
    lines.append(f"total: {len(plans)} runs, {total:.3g} {convention} FLOPs = "
                 f"{units.to_pflops_days(total):.3g} PFLOP/s-days")
    return "\n".join(lines)
