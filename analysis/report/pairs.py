"""Which arms the report compares, and how each comparison is drawn: the papers' pairs.

The rule, in one place (:data:`PAPER_BASELINES`): each arm is compared with the baseline
its paper used, when the sweep has that baseline, and drawn the way that paper drew it:

==============================  =========  ==================================================
arm (name or display name)      baseline   drawn as
==============================  =========  ==================================================
``moba``, ``moba_*``, "MoBA*"   ``full``   MoBA Figure 3: loss vs compute, every run's curve
                                           and each arm's dashed envelope projection
``kimi_linear``, "Kimi Linear"  ``mla``    Kimi Linear's chart: final loss per run, a law per
                                           arm, the equal-loss compute arrow ("1.16x")
``mla``, "MLA"                  ``full``   the Kimi-style chart (DeepSeek-V2 compared MLA
                                           with full attention; this ties the Kimi pair to
                                           full attention when both are in the sweep)
any other arm                   ``full``,  the Kimi-style chart (the generic multiplier
                                else       picture)
                                ``mla``,
                                else the
                                first arm
==============================  =========  ==================================================

An arm whose paper baseline is missing from the sweep (``kimi_linear`` without ``mla``)
falls back to the last row's baseline. Arms are recognised by their name (``arm`` in
``results.jsonl``) or display name (``arm_display``), lower-cased with non-alphanumerics
as ``_``: an arm matches a key when that form equals the key or starts with ``key_``
(``moba_switch90``, "MoBA (last layer full)"). ``--baseline`` / ``--improved`` override
the pairs; the drawing still follows the improved arm's row.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Mapping, Sequence

from analysis.results import AnalysisError

MOBA_STYLE = "moba"     # loss vs compute with per-run curves and dashed projections
KIMI_STYLE = "kimi"     # final points, fitted laws, the multiplier arrow

# (arm key, its paper's baseline key, drawing style, where the comparison comes from)
PAPER_BASELINES = (
    ("moba", "full", MOBA_STYLE, "MoBA (Lu et al. 2025), Figure 3"),
    ("kimi_linear", "mla", KIMI_STYLE, "Kimi Linear (Kimi Team 2025), the 1.16x chart"),
    ("mla", "full", KIMI_STYLE, "DeepSeek-V2 compared MLA with full attention"),
)
FALLBACK_BASELINES = ("full", "mla")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One (baseline, improved) pair, how it is drawn, and whose comparison it is."""

    baseline: str
    improved: str
    style: str
    source: str


def _forms(arm: str, labels: Mapping[str, str] | None) -> tuple[str, ...]:
    norm = lambda s: re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_")  # noqa: E731
    return tuple(dict.fromkeys(norm(s) for s in (arm, (labels or {}).get(arm) or arm)))


def matches(arm: str, key: str, labels: Mapping[str, str] | None = None) -> bool:
    """True when ``arm`` (by name or display name) is ``key`` or a variant ``key_*``."""
    return any(f == key or f.startswith(key + "_") for f in _forms(arm, labels))


def _rule(arm: str, labels) -> tuple | None:
    return next((r for r in PAPER_BASELINES if matches(arm, r[0], labels)), None)


def _find(arms: Sequence[str], key: str, labels, exclude: str) -> str | None:
    """The sweep's arm for ``key``: the arm of that exact name, else one whose display name
    matches (a variant such as ``moba_switch90`` is no baseline for another arm)."""
    if key in arms and key != exclude:
        return key
    return next((a for a in arms if a != exclude and matches(a, key, labels)
                 and (_rule(a, labels) or (key,))[0] == key), None)


def fallback_baseline(arms: Sequence[str], labels=None, exclude: str | None = None) -> str:
    """``full`` if present, else ``mla``, else the first arm (other than ``exclude``)."""
    for key in FALLBACK_BASELINES:
        found = _find(arms, key, labels, exclude)
        if found is not None:
            return found
    return next(a for a in arms if a != exclude)


def paper_baseline(arm: str, arms: Sequence[str], labels=None) -> str | None:
    """The arm ``arm`` is compared with by default (``None``: it is the sweep's baseline)."""
    rule = _rule(arm, labels)
    if rule is not None:
        found = _find(arms, rule[1], labels, arm)
        if found is not None:
            return found
    base = fallback_baseline(arms, labels)
    if base == arm:
        return None
    return base


def comparison(baseline: str, improved: str, labels=None) -> Comparison:
    """How the pair is drawn: the improved arm's paper style when ``baseline`` is its paper's
    baseline, else the Kimi-style chart."""
    rule = _rule(improved, labels)
    if rule is not None and matches(baseline, rule[1], labels):
        return Comparison(baseline, improved, rule[2], rule[3])
    return Comparison(baseline, improved, KIMI_STYLE, "no paper: the generic multiplier chart")


def choose_comparisons(arms: Sequence[str], baseline: str | None = None, improved: str | None = None,
                       labels: Mapping[str, str] | None = None) -> list[Comparison]:
    """The report's comparisons: by default each arm against its paper's baseline
    (:data:`PAPER_BASELINES`); ``baseline`` / ``improved`` override (explicit arms must be
    in the sweep)."""
    for name in (baseline, improved):
        if name is not None and name not in arms:
            raise AnalysisError(f"arm {name!r} is not in the sweep (its arms: {', '.join(arms)}); "
                                "pass --baseline/--improved with one of those")
    if len(arms) < 2:
        return []
    if improved is not None:
        base = baseline or paper_baseline(improved, arms, labels) or fallback_baseline(arms, labels)
        if improved == base:
            raise AnalysisError(f"--improved={improved} is also the baseline; pick another arm")
        return [comparison(base, improved, labels)]
    if baseline is not None:
        return [comparison(baseline, a, labels) for a in arms if a != baseline]
    out = []
    for a in arms:
        base = paper_baseline(a, arms, labels)
        if base is not None:
            out.append(comparison(base, a, labels))
    return out
