"""Element-wise FLOPs of the model's building blocks, as XLA compiles them.

The "compiled" FLOP convention (``moba_jax/units.py``) counts what the compiled program
computes, checked against XLA's ``compiled.cost_analysis()["flops"]``. Besides the
matmuls, that analysis charges one FLOP per output element of every element-wise
operation (add, multiply, select, compare, ...; ``exp``, ``log``, ``rsqrt`` and the like
count as "transcendentals", not FLOPs) and ``n - 1`` per reduced group of ``n``. Its count
is of the program after fusion, which recomputes some cheap values in every consumer, so
the backward is not a fixed multiple of the forward: the coefficients below are the
operations per element of the program XLA:CPU compiles for this code (the forward from
the code itself, the backward measured from the compiled train step; see
``tests/test_flops*.py``).

Every function returns ``(forward, train)`` FLOPs per token, ``train`` being the forward
plus the backward of a training step. Shapes are per token: ``width`` the normalised
vector, ``elements`` the activations the operation maps.
"""
from __future__ import annotations

# Per element: (forward, forward + backward).
SWIGLU = (5.0, 21.0)      # silu(gate) * up: negate, add, divide, two multiplies
SILU = (4.0, 10.0)
SIGMOID = (3.0, 9.0)      # expanded to 1 / (1 + exp(-x))
SOFTPLUS_DECAY = (15.0, 22.0)   # -exp(A) * softplus(f + dt_bias) (logaddexp with 0)
L2_NORM = (5.0, 14.0)     # x * rsqrt(sum x^2 + eps) over the head dim
GATE_PRODUCT = (1.0, 4.0)
# Softmax attention per scored (query head, key) pair, by implementation: scale, mask,
# max, subtract, sum, normalise; the backward of autodiff's softmax (xla, reference).
# The causal mask's index compares are made once per program, not per sequence, and
# are left out.
SOFTMAX = {"xla": (6.0, 20.0), "cudnn": (6.0, 20.0), "reference": (6.0, 20.0),
           # kernels/causal, FlashAttention-style: mask, max, subtract, sum (the scale
           # goes to q); the backward recomputes P from the saved log-sum-exp (subtract,
           # select) and forms dS = P (dP - delta) (subtract, multiply).
           "blocked": (4.0, 9.0)}
# A vector read by n projections gets its gradient summed from n parts; XLA recomputes
# the running sum in each consumer's fusion: about 3 FLOPs per element per extra reader.
FANOUT_ADD = 3.0


def rmsnorm(width: int, rows: int = 1, *, inner: bool = False) -> tuple[float, float]:
    """RMSNorm of ``rows`` vectors of ``width``: ``x * rsqrt(mean(x^2) + eps) * scale``
    (square, mean, two multiplies, the eps add). ``inner``: a norm inside an attention
    layer (MLA's latent, KDA's output), whose backward XLA compiles to about 16 FLOPs per
    element against 12 for the residual stream's pre-norms."""
    fwd = rows * (4.0 * width + 1.0)
    return fwd, fwd + rows * width * (16.0 if inner else 12.0)


def per_element(coeffs: tuple[float, float], elements: float) -> tuple[float, float]:
    return coeffs[0] * elements, coeffs[1] * elements


def rotary(elements: float, width: int, calls: int = 2) -> tuple[float, float]:
    """Rotary embedding of ``elements`` (heads x width) per token in ``calls`` calls: the
    rotate-half products and sums (3 per element) and each call's angles
    (``width / 2`` products and a convert per position)."""
    angles = calls * (width / 2.0 + 1.0)
    return 3.0 * elements + angles, 9.0 * elements + 3.0 * angles


def softmax_attention(implementation: str, scored: float) -> tuple[float, float]:
    """Softmax over ``scored`` (query head, key) pairs per token (:data:`SOFTMAX`)."""
    return per_element(SOFTMAX.get(implementation, SOFTMAX["xla"]), scored)


def fanout(width: int, readers: int) -> tuple[float, float]:
    """Backward-only cost of a ``width`` vector read by ``readers`` projections."""
    return 0.0, FANOUT_ADD * width * max(readers - 1, 0)


def add(*terms: tuple[float, float]) -> tuple[float, float]:
    return sum(t[0] for t in terms), sum(t[1] for t in terms)
