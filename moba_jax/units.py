"""Units and FLOP conventions of the model side (``shared/design/scaling.md``).

- ``PFLOP_S_DAY``: one PFLOP/s-day, ``1e15 * 86400 = 8.64e19`` FLOPs, the compute
  unit of both papers' scaling figures.
- ``CONVENTIONS``: the ways a training FLOP is counted (``convention=`` everywhere):

  ``"6nd"``: Kaplan et al.: ``6 N`` per token, N the non-embedding (activated)
  parameters; attention gets no credit or charge.
  ``"exact"``: every matmul the architecture needs at the run's sequence length
  (causal attention over exactly the pairs its mask allows); training = 3 x forward.
  ``"compiled"``: what the program we run computes (dense attention computes all
  ``T^2`` pairs), its element-wise work included (norms, activations, softmax, masks,
  rotary, the loss); training counts forward plus backward term by term, not 3 x
  forward (``moba_jax/accounting.py``); the count tested against XLA's
  ``cost_analysis()`` (``tests/test_flops*.py``).

The analysis package reads plain result files and keeps the reader's side of these
definitions in ``analysis/units.py``; ``tests/test_layering.py`` checks both agree.
"""
from __future__ import annotations

PFLOP_S_DAY = 1e15 * 86400.0
CONVENTIONS = ("6nd", "exact", "compiled")
FORWARD_CONVENTIONS = ("exact", "compiled")   # the conventions a per-layer forward count takes


def to_pflops_days(flops: float) -> float:
    return flops / PFLOP_S_DAY


def from_pflops_days(pfd: float) -> float:
    return pfd * PFLOP_S_DAY


def check_convention(convention: str, allowed=CONVENTIONS) -> str:
    if convention not in allowed:
        raise ValueError(f"FLOP convention {convention!r}: choose one of {tuple(allowed)}")
    return convention
