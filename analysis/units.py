"""Compute units and FLOP conventions as the analysis reads them (``shared/design/scaling.md``).

- ``FLOPS_PER_PFLOP_S_DAY``: one PFLOP/s-day, ``1e15 FLOP/s x 86,400 s = 8.64e19`` FLOPs,
  the compute unit of both papers' scaling figures; :func:`pflops_days` and
  :func:`flops_from_pflops_days` convert.
- ``CONVENTIONS``: the FLOP counts a sweep's plain files carry for every run
  (``metrics.jsonl`` columns ``flops_<convention>``) and the analysis can put on an axis:

  ``"exact"``: every matmul the architecture needs at the run's sequence length;
  ``"6nd"``: Kaplan et al.'s ``6 N D`` (N non-embedding parameters).

  The model side also counts ``"compiled"`` (what the program computes, checked against
  XLA); it is a diagnostic of the FLOP counter, not an axis of the scaling figures, so
  the analysis does not read it.
- ``CONVENTION_AXIS_LABELS`` / ``CONVENTION_NAMES``: how figures (axis labels) and
  report text name each convention.
- ``LOSS_AXIS_LABEL``: the loss axis of every figure, "validation loss (nats per byte)".
  The loss is the mean cross-entropy in nats per token, and this project's tokenizer
  (``moba_jax/data/tokenizer.py``) makes every token one UTF-8 byte (plus one BOS and
  one EOS per document), so a token is a byte; a hand-made CSV from another tokenizer
  would be in nats per token, which the label would then misname.

The model side keeps its own ``moba_jax/units.py``; the analysis imports neither
``moba_jax`` nor ``kernels`` (it reads plain files), so the constant lives in both.
"""
from __future__ import annotations

import numpy as np

FLOPS_PER_PFLOP_S_DAY = 1e15 * 86_400  # 8.64e19
CONVENTIONS = ("exact", "6nd")
# Figure axes: "PFLOP/s-days (exact FLOPs)".
CONVENTION_AXIS_LABELS = {"exact": "exact FLOPs", "6nd": "6ND"}
LOSS_UNIT = "nats per byte"
LOSS_AXIS_LABEL = f"validation loss ({LOSS_UNIT})"
# Report text and table headers: "C 6ND (PFLOP/s-days)", "the **exact** FLOP convention".
CONVENTION_NAMES = {"exact": "exact", "6nd": "6ND"}


def pflops_days(flops):
    """FLOPs -> PFLOP/s-days (1 PFLOP/s-day = 1e15 FLOP/s x 86,400 s = 8.64e19 FLOPs)."""
    return np.asarray(flops, dtype=float) / FLOPS_PER_PFLOP_S_DAY


def flops_from_pflops_days(pfd):
    """PFLOP/s-days -> FLOPs."""
    return np.asarray(pfd, dtype=float) * FLOPS_PER_PFLOP_S_DAY


def axis_label(convention: str | None) -> str:
    """``"PFLOP/s-days (exact FLOPs)"``; plain ``"PFLOP/s-days"`` for ``None``."""
    if convention is None:
        return "PFLOP/s-days"
    return f"PFLOP/s-days ({CONVENTION_AXIS_LABELS.get(convention, convention)})"
