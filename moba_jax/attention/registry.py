"""The registry of attention kinds, and the contract every kind fulfils.

A model config names the attention of each layer (``"full"``, ``"moba"``, ...);
:func:`get_attention` resolves the name to the kind's class. The class is the
whole kind: everything the rest of the code asks about an attention lives on it,
in its own module, so a new kind is one module (inside or outside this package)
that is imported before the config is used. Budgets, the dry-run plan, FLOP and
parameter accounting, training, decoding and the sweep's figures all ask here.

The contract (checked by :func:`register_attention` when the class is registered):

Layer (an ``nnx.Module``):
  ``cls(cfg, layer_idx, *, rngs)`` with ``cfg`` the model ``ConfigDict``;
  ``layer(x_BTD, positions_BT) -> y_BTD`` (causal over T).
Decode cache:
  ``layer.init_cache(batch, max_len) -> pytree`` and
  ``layer.step(x_BSD, positions_BS, cache, start) -> (y_BSD, new_cache)``: S new
  tokens at positions ``start .. start+S-1`` (a prompt, then one token at a time).
  Decoding must reproduce the full forward pass's logits.
Options:
  ``default_options() -> dict``, the kind's entries in ``cfg.attention.<kind>``.
  Optional: ``check_options(cfg) -> None``, a static method that raises
  :class:`moba_jax.checks.ConfigError` for options the kind cannot take (run by
  the validation pass before any FLOP count, model or file is made).
Accounting (per layer, from the model config alone, no arrays):
  ``param_count(cfg) -> int``: the layer's parameters;
  ``flops_per_token(cfg, seq_len, convention) -> float``: forward FLOPs per token
  of the layer in the ``"exact"`` convention (what the mechanism needs) and the
  ``"compiled"`` convention (what the configured implementation computes), see
  ``shared/design/scaling.md``. The ``"6nd"`` count follows from ``param_count``.
  Optional: ``train_flops_per_token(cfg, seq_len, convention) -> float``, a static
  method: forward plus backward FLOPs per token of the layer in a training step. A
  kind without one gets ``3 * flops_per_token(...)`` (:func:`default_train_flops`): the
  definition in "exact" (scaling.md: backward = two matmuls per forward matmul), and
  right for the matmuls in "compiled". The built-in kinds define it because in
  "compiled" the element-wise backward is no fixed multiple of the forward
  (``moba_jax/elementwise.py``) and some work has no backward (MoBA's routing).
Presentation:
  ``display_name`` (the paper's name, e.g. ``"MoBA"``) and ``colour_family`` (a
  matplotlib colormap name; arms of one family get shades of it in figures).
Hybrid schedules:
  ``switch_target``: ``None``, or the name of a kind with exactly this kind's
  parameters that a run may switch to part-way (``train.switch_to_full_at``),
  e.g. MoBA -> ``"full"``.

Registration is ``@register_attention("name")`` on the class.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import sys
from collections import Counter
from typing import Callable, Mapping, Sequence

_REGISTRY: dict[str, type] = {}

# name -> what the contract requires of it (for the error message).
_REQUIRED = {
    "default_options": "a static method returning the kind's option defaults",
    "param_count": "a static method (cfg) -> parameters of one layer",
    "flops_per_token": "a static method (cfg, seq_len, convention) -> forward FLOPs per token",
    "init_cache": "a method (batch, max_len) -> decode cache",
    "step": "a method (x_BSD, positions_BS, cache, start) -> (y_BSD, new_cache)",
    "__call__": "the layer's forward pass (x_BTD, positions_BT) -> y_BTD",
}
_REQUIRED_ATTRS = {"display_name": str, "colour_family": str}


class UnknownAttentionError(ValueError):
    """An attention kind that is not registered."""


class AttentionContractError(TypeError):
    """A class registered as an attention kind misses part of the contract."""


def register_attention(name: str) -> Callable[[type], type]:
    """Class decorator: registers ``cls`` as attention kind ``name`` after checking the contract."""
    def wrap(cls: type) -> type:
        if name in _REGISTRY and _REGISTRY[name].__qualname__ != cls.__qualname__:
            raise ValueError(f"attention kind {name!r} is registered twice "
                             f"({_REGISTRY[name].__module__} and {cls.__module__})")
        missing = [f"{a} ({why})" for a, why in _REQUIRED.items() if not callable(getattr(cls, a, None))]
        missing += [f"{a} (a {t.__name__} class attribute)" for a, t in _REQUIRED_ATTRS.items()
                    if not isinstance(getattr(cls, a, None), t)]
        if missing:
            raise AttentionContractError(
                f"attention kind {name!r} ({cls.__module__}.{cls.__qualname__}) misses: "
                + "; ".join(missing) + ". See moba_jax/attention/registry.py for the contract.")
        cls.kind = name
        if not hasattr(cls, "switch_target"):
            cls.switch_target = None
        if not _defines_train_flops(cls):
            cls.train_flops_per_token = staticmethod(default_train_flops(cls))
        _REGISTRY[name] = cls
        return cls
    return wrap


def _owner(cls: type, attr: str) -> type | None:
    return next((c for c in cls.__mro__ if attr in vars(c)), None)


def _defines_train_flops(cls: type) -> bool:
    """Whether ``cls`` has a ``train_flops_per_token`` written for its own
    ``flops_per_token``: defined on the class that defines the forward count, or below
    it (a subclass that overrides only the forward count does not inherit the training
    count of its parent, which would no longer match it)."""
    train, fwd = _owner(cls, "train_flops_per_token"), _owner(cls, "flops_per_token")
    return train is not None and issubclass(train, fwd)


def default_train_flops(cls: type) -> Callable[..., float]:
    """``3 x`` the kind's forward count: the contract's default training count."""
    def train_flops_per_token(cfg, seq_len: int, convention: str) -> float:
        return 3.0 * cls.flops_per_token(cfg, seq_len, convention)
    return train_flops_per_token


def get_attention(name: str) -> type:
    if name not in _REGISTRY:
        raise UnknownAttentionError(
            f"model.attention_pattern: unknown attention kind {name!r}; "
            f"known kinds: {', '.join(sorted(_REGISTRY))} (a kind defined in your own module "
            "must be imported before the config is used, e.g. from the config file)")
    return _REGISTRY[name]


def known_kinds() -> list[str]:
    return sorted(_REGISTRY)


def default_options() -> dict[str, dict]:
    """``{kind: options}`` of every registered kind (each class's ``default_options()``)."""
    return {k: dict(cls.default_options()) for k, cls in sorted(_REGISTRY.items())}


def describe(kinds: Sequence[str]) -> tuple[str, str]:
    """``(display name, colour family)`` of a model whose layers have these kinds.

    One kind: its own name and family. A hybrid: the display names joined by
    ``" + "`` in order of first appearance, coloured by the family of its most
    frequent kind (ties go to the earlier layer).
    """
    if not kinds:
        raise ValueError("describe() needs at least one layer kind")
    counts = Counter(kinds)
    order = list(dict.fromkeys(kinds))
    main = max(order, key=lambda k: (counts[k], -order.index(k)))
    name = " + ".join(get_attention(k).display_name for k in order)
    return name, get_attention(main).colour_family


def kind_sources(kinds: Sequence[str]) -> dict[str, dict]:
    """``{kind: {"module", "file"}}``: where each kind is defined, for a run's config.json,
    so that evaluation and decoding can import a user's own kind again
    (:func:`import_kinds`)."""
    out = {}
    for k in dict.fromkeys(kinds):
        cls = get_attention(k)
        try:
            path = inspect.getsourcefile(cls)
        except TypeError:
            path = None
        out[k] = {"module": cls.__module__, "file": path}
    return out


def import_kinds(sources: Mapping[str, Mapping]) -> None:
    """Registers the kinds named in ``sources`` (from :func:`kind_sources`) that are not
    registered yet: by module name when importable, else from the recorded file."""
    for kind, src in sources.items():
        if kind in _REGISTRY:
            continue
        module, path = src.get("module"), src.get("file")
        try:
            importlib.import_module(module)
        except ImportError:
            if not path or not os.path.exists(path):
                raise UnknownAttentionError(
                    f"attention kind {kind!r} was defined in module {module!r} ({path}), which "
                    "cannot be imported here; put it on PYTHONPATH") from None
            spec = importlib.util.spec_from_file_location(module, path)
            mod = importlib.util.module_from_spec(spec)
            sys.modules[module] = mod
            spec.loader.exec_module(mod)
        if kind not in _REGISTRY:
            raise UnknownAttentionError(f"importing {module!r} did not register attention kind "
                                        f"{kind!r}")
