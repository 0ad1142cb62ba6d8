"""Parameters and FLOPs of one MoE layer, from the model config alone.

Parameters: the router ``[D, E]`` and its balancing bias ``[E]`` (a stored vector, not
trained by gradients, counted with the parameters as checkpoints store it), ``E``
routed SwiGLU experts of width ``F = expert_dim`` (``3 D F`` each) and the shared
experts (``3 D n_shared F``). *Activated* parameters are those a token uses: the
router, its bias, ``top_k`` routed experts and the shared ones; this is the N of the
6ND convention for MoE models (as the MoE papers' axes count it).

FLOPs per token, forward (training: 3 x in "exact", term by term in "compiled"):

- ``exact``: the activated matmuls, ``2 (D E + (top_k + n_shared) 3 D F)``: the
  router and the routed FLOPs the mechanism needs;
- ``compiled``: what the configured implementation computes, routing included: the
  router, the experts' matmuls (``"ragged"``: the ``top_k`` rows per token of the
  grouped matmul that ``jax.lax.ragged_dot`` is on TPU and GPU; ``"dense"``: all
  ``E`` experts), the shared experts, and the element-wise work (router scores, gates,
  SwiGLU, the gate-weighted combine; in training also the balance loss). XLA:CPU
  lowers ``ragged_dot`` to a masked product over every expert, so on CPU the
  "ragged" program computes ``E`` times the counted expert matmuls (use
  ``implementation="dense"`` on CPU, or read CPU MFU of a ragged run with that in
  mind); the "dense" count agrees with XLA's cost analysis on CPU
  (``tests/test_moe.py``).
"""
from __future__ import annotations

from moba_jax.moe.config import expert_dim

# Element-wise FLOPs per element as XLA compiles them, (forward, forward + backward):
# silu(gate) * up; a sigmoid (or a softmax) score; the gate-weighted sum of the experts'
# outputs; the balance loss's one-hot compare and sums (training only).
SWIGLU = (5.0, 13.0)
SCORE = {"sigmoid": (3.0, 9.0), "softmax": (4.0, 12.0)}
COMBINE = (2.0, 6.0)


def layer_params(cfg) -> int:
    """All parameters of one MoE layer."""
    m, d, f = cfg.moe, cfg.d_model, expert_dim(cfg)
    return d * m.n_experts + m.n_experts + 3 * d * f * (m.n_experts + m.n_shared)


def layer_activated_params(cfg) -> int:
    """Parameters one token uses in one MoE layer (module docstring)."""
    m, d, f = cfg.moe, cfg.d_model, expert_dim(cfg)
    return d * m.n_experts + m.n_experts + 3 * d * f * (m.top_k + m.n_shared)


def _computed_experts(cfg) -> int:
    """Routed experts whose matmuls the configured implementation computes per token."""
    m = cfg.moe
    return int(m.n_experts) if str(m.implementation) == "dense" else int(m.top_k)


def layer_flops(cfg, convention: str) -> tuple[float, float]:
    """``(forward, train)`` FLOPs per token of one MoE layer in ``"exact"`` or
    ``"compiled"`` (module docstring)."""
    m, d, f = cfg.moe, cfg.d_model, expert_dim(cfg)
    e, k, shared = int(m.n_experts), int(m.top_k), int(m.n_shared)
    if convention == "exact":
        fwd = 2.0 * (d * e + 3 * d * f * (k + shared))
        return fwd, 3.0 * fwd
    if convention != "compiled":
        raise ValueError(f"MoE FLOPs are counted in 'exact' or 'compiled', not {convention!r}")
    c = _computed_experts(cfg)
    matmul = 2.0 * (d * e + 3 * d * f * (c + shared))
    hidden = f * (c + shared)
    score = SCORE[str(m.score)]
    fwd = matmul + SWIGLU[0] * hidden + score[0] * e + COMBINE[0] * c * d + 4.0 * k
    # The balance loss: a one-hot compare per (choice, expert), the normalised scores.
    balance = 2.0 * k * e + 4.0 * e
    train = 3.0 * matmul + SWIGLU[1] * hidden + score[1] * e + COMBINE[1] * c * d \
        + 12.0 * k + balance
    return fwd, train
