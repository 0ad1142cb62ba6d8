"""The report as data: a list of blocks (headings, paragraphs, bullets, tables, figures)
built once by the sections and rendered twice (:mod:`analysis.report.render`), plus the
number formatting of table cells."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclasses.dataclass(frozen=True)
class Para:
    text: str


@dataclasses.dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Table:
    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclasses.dataclass(frozen=True)
class Image:
    path: Path
    caption: str


def fmt(x, digits: int = 3) -> str:
    """``x`` to ``digits`` significant digits; a dash for ``None`` or a non-finite value."""
    return "–" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def fmt_ci(value, ci, digits: int = 4) -> str:
    """``value [lo, hi]`` (just ``value`` without an interval)."""
    s = fmt(value, digits)
    return s if ci is None else f"{s} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"
