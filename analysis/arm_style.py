"""How arms are named and coloured in figures and reports.

The analysis holds no table of arm names: the sweep writes each arm's display name and
colour family (a matplotlib colormap name) into its plain result files
(``results.jsonl`` fields ``arm_display`` and ``arm_colour``, read by
:mod:`analysis.results` into the :class:`~analysis.results.Sweep`). Arms without them
(old sweeps, hand-made CSVs, laws typed in by hand) fall back to their own name and an
automatic colour family, distinct from the others of the same figure::

    display_names(["full", "moba"], {"moba": "MoBA"})   # {"full": "full", "moba": "MoBA"}
    colour_families(["mla", "full"], {"mla": "Blues", "full": "Blues"})
    # {"mla": "Blues", "full": "Reds"}: a family already taken goes to the next free one
"""
from __future__ import annotations

from typing import Mapping, Sequence

# Families given, in this order, to arms without a declared one (or whose declared one is
# already taken in the figure).
AUTO_COLOUR_FAMILIES = ("Blues", "Reds", "Greens", "Purples", "Oranges", "Greys")


def display_name(arm: str, labels: Mapping[str, str] | None = None) -> str:
    """``labels[arm]`` when given, else the arm's own name."""
    return (labels or {}).get(arm) or arm


def display_names(arms: Sequence[str], labels: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{arm: display name}`` for every arm (see :func:`display_name`)."""
    return {arm: display_name(arm, labels) for arm in arms}


def colour_families(arms: Sequence[str], colours: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{arm: colormap name}``, distinct across ``arms`` while the automatic families last.

    In order of ``arms``: the declared family ``colours[arm]`` unless an earlier arm took
    it, else the first of :data:`AUTO_COLOUR_FAMILIES` no earlier arm took (cycling once
    all are used).
    """
    colours = colours or {}
    chosen, used = {}, set()
    for arm in arms:
        name = colours.get(arm)
        if name in used:
            name = None
        if name is None:
            name = next((c for c in AUTO_COLOUR_FAMILIES if c not in used),
                        AUTO_COLOUR_FAMILIES[len(used) % len(AUTO_COLOUR_FAMILIES)])
        used.add(name)
        chosen[arm] = name
    return chosen
