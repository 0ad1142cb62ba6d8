"""Config errors and the range checks that raise them: the leaf every module may import.

A :class:`ConfigError` is one line, ``<field>: <problem>; <what to do>``; the entry
points print it as ``error: ...`` and exit 2. The checks here know nothing of the
model; :mod:`moba_jax.validation` runs them over a whole run config, and each
attention kind's ``check_options`` uses them for its own options.
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


def number(field: str, value: Any, integer: bool = False):
    """``value`` as an int (``integer``) or float; raises unless it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (integer and not float(value).is_integer()):
        kind = "an integer" if integer else "a number"
        raise ConfigError(field, f"{value!r} is not {kind}", f"give {kind}")
    if not math.isfinite(float(value)):
        raise ConfigError(field, f"{value!r} is not finite", "give a finite number")
    return int(value) if integer else float(value)


def at_least(field: str, value: Any, low: float, fix: str, *, integer: bool = False) -> None:
    """Raises unless ``value >= low``."""
    v = number(field, value, integer)
    if v < low:
        what = "negative" if low == 0 else f"below {low:g}"
        raise ConfigError(field, f"{value!r} is {what}", fix)


def positive(field: str, value: Any, fix: str, *, integer: bool = False) -> None:
    """Raises unless ``value > 0``."""
    v = number(field, value, integer)
    if v <= 0:
        raise ConfigError(field, f"{value!r} is not positive", fix)


def in_interval(field: str, value: Any, low: float, high: float, *, closed_high: bool,
                fix: str) -> None:
    """Raises unless ``low <= value < high`` (``<= high`` when ``closed_high``)."""
    v = number(field, value)
    if not (low <= v and (v <= high if closed_high else v < high)):
        bracket = "]" if closed_high else ")"
        raise ConfigError(field, f"{value!r} is outside [{low:g}, {high:g}{bracket}", fix)


def one_of(field: str, value: Any, choices) -> None:
    """Raises unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ConfigError(field, f"{value!r} is not one of {', '.join(map(repr, choices))}",
                          f"choose one of them, e.g. --config.{field}={choices[0]}")


def number_list(field: str, value, integer: bool) -> list:
    """The comma-separated numbers of ``value`` (raises :class:`ConfigError` naming ``field``)."""
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
