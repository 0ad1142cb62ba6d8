"""Parameter and FLOP accounting of a model config, in the conventions of scaling.md.

Every number comes from the config alone (no arrays), by summing each layer's terms:
the attention of a layer is asked through the registry (its kind's ``param_count``
and ``flops_per_token``, see ``moba_jax/attention/registry.py``), the rest (SwiGLU
MLP, norms, logits) is counted here. Conventions and units: ``moba_jax/units.py``.

A matmul ``[m, k] @ [k, n]`` is ``2 m k n`` FLOPs; embedding look-ups are free, the
output projection (logits) is not. ``6nd`` is ``6 N`` with N the non-embedding
parameters; ``exact`` counts the matmuls and trains at 3 x forward.

``compiled`` counts what the program we run computes, as XLA's cost analysis does:
the matmuls plus the element-wise work of every op (norms, SwiGLU, residual adds, the
embedding gather; each kind's softmax, masks, rotary, gates; see
``moba_jax/elementwise.py``). Its training count is forward plus backward term by term:
3 x for matmuls, the measured backward for element-wise work, nothing for work without
a gradient (MoBA's routing), plus the loss (log-softmax cross-entropy over the
vocabulary and its gradient). Each attention kind gives its own training count
(``train_flops_per_token`` of the registry contract, default 3 x forward). The
optimizer's update is per step, not per token: :func:`optimizer_flops_per_step`, and
:func:`train_step_flops` for a whole compiled step.
"""
from __future__ import annotations

from moba_jax import elementwise as ew
from moba_jax.attention import get_attention
from moba_jax.model import layer_kinds
from moba_jax.moe import cost as moe_cost, mlp_kinds
from moba_jax.units import CONVENTIONS, FORWARD_CONVENTIONS, check_convention

# AdamW with global-norm clipping (moba_jax/train/optim.py) as XLA compiles it: the
# gradient's normalisation by the loss tokens, its squared norm, the clip, both moments
# with their bias corrections, the decoupled weight decay and the update.
OPTIMIZER_FLOPS_PER_PARAM = 22.0
# Softmax cross-entropy over the vocabulary with its gradient: max and sum reductions,
# subtract, the one-hot gradient.
LOSS_FLOPS_PER_LOGIT = 4.0


def mlp_params(cfg) -> int:
    """One SwiGLU MLP: gate, up and down projections."""
    return 3 * cfg.d_model * cfg.mlp_dim


def non_embedding_params(cfg, activated: bool = False) -> int:
    """N of the 6ND convention: all parameters but the embedding table and an
    untied output head (matches :func:`moba_jax.model.param_counts`). ``activated``:
    only those a token uses (MoE layers: router, top-k and shared experts;
    ``moba_jax/moe/cost.py``), the N of 6ND for mixture-of-experts models."""
    d = cfg.d_model
    moe = moe_cost.layer_activated_params if activated else moe_cost.layer_params
    total = d                                         # final norm
    for kind, mlp in zip(layer_kinds(cfg), mlp_kinds(cfg)):
        total += 2 * d + get_attention(kind).param_count(cfg)   # two RMSNorm scales
        total += mlp_params(cfg) if mlp == "dense" else moe(cfg)
    return total


def activated_params(cfg) -> int:
    """Non-embedding parameters a token uses (= :func:`non_embedding_params` for a
    dense model)."""
    return non_embedding_params(cfg, activated=True)


def _moe_flops(cfg, convention: str) -> tuple[float, float]:
    """``(forward, train)`` FLOPs per token of all MoE layers (``moba_jax/moe/cost.py``)."""
    n = mlp_kinds(cfg).count("moe")
    if not n:
        return 0.0, 0.0
    fwd, train = moe_cost.layer_flops(cfg, convention)
    return n * fwd, n * train


def embedding_params(cfg) -> int:
    return cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)


def _common_compiled(cfg) -> dict[str, tuple[float, float]]:
    """``{part: (forward, train)}`` element-wise FLOPs per token outside the attention:
    SwiGLU and its two readers' gradient sum, the norms, the residual adds and the
    embedding gather (a bounds-checked take; its gradient a scatter-add)."""
    d, n = cfg.d_model, cfg.n_layers
    mlp = ew.add(ew.per_element(ew.SWIGLU, cfg.mlp_dim), ew.fanout(d, 2))
    norm = ew.rmsnorm(d)
    other = ew.add((n * (2 * norm[0] + 2.0 * d), n * (2 * norm[1] + 2.0 * d)), norm,
                   (3.0 * d, 6.0 * d))
    n_dense = mlp_kinds(cfg).count("dense")           # MoE layers: _moe_flops
    return {"mlp": (n_dense * mlp[0], n_dense * mlp[1]), "other": other}


def forward_flops_per_token(cfg, seq_len: int, convention: str = "exact") -> dict[str, float]:
    """Forward FLOPs per token, broken down into ``attention``, ``mlp``, ``logits``,
    ``other`` (norms, residual adds and the embedding gather: element-wise work, so 0
    but in "compiled") and ``total``."""
    if convention not in FORWARD_CONVENTIONS:
        raise ValueError(f"convention must be one of {FORWARD_CONVENTIONS} for a forward "
                         f"count, got {convention!r}")
    attn = sum(get_attention(k).flops_per_token(cfg, seq_len, convention) for k in layer_kinds(cfg))
    mlp = mlp_kinds(cfg).count("dense") * 2.0 * mlp_params(cfg) + _moe_flops(cfg, convention)[0]
    logits = 2.0 * cfg.d_model * cfg.vocab_size
    other = 0.0
    if convention == "compiled":
        common = _common_compiled(cfg)
        mlp += common["mlp"][0]
        other = common["other"][0]
    return {"attention": attn, "mlp": mlp, "logits": logits, "other": other,
            "total": attn + mlp + logits + other}


def train_flops_per_token(cfg, seq_len: int, convention: str = "exact") -> float:
    """Training (forward + backward) FLOPs per token in ``convention``: ``6 N`` (6nd),
    3 x forward (exact), or term by term (compiled, module docstring; the optimizer's
    per-step update is left out, see :func:`train_step_flops`)."""
    check_convention(convention)
    if convention == "6nd":
        return 6.0 * activated_params(cfg)
    if convention == "exact":
        return 3.0 * forward_flops_per_token(cfg, seq_len, convention)["total"]
    attn = sum(get_attention(k).train_flops_per_token(cfg, seq_len, convention)
               for k in layer_kinds(cfg))
    n_dense = mlp_kinds(cfg).count("dense")
    matmuls = 3.0 * (n_dense * 2.0 * mlp_params(cfg) + 2.0 * cfg.d_model * cfg.vocab_size)
    common = _common_compiled(cfg)
    loss = LOSS_FLOPS_PER_LOGIT * cfg.vocab_size
    return attn + matmuls + _moe_flops(cfg, convention)[1] + common["mlp"][1] \
        + common["other"][1] + loss


def train_flops_per_token_all(cfg, seq_len: int) -> dict[str, float]:
    """``{convention: training FLOPs per token}`` for every convention."""
    return {c: train_flops_per_token(cfg, seq_len, c) for c in CONVENTIONS}


def optimizer_flops_per_step(cfg) -> float:
    """FLOPs of one optimizer update ("compiled" convention): about
    :data:`OPTIMIZER_FLOPS_PER_PARAM` per parameter, whatever the batch."""
    return OPTIMIZER_FLOPS_PER_PARAM * (non_embedding_params(cfg) + embedding_params(cfg))


def train_step_flops(cfg, seq_len: int, batch: int) -> float:
    """FLOPs of one compiled training step on ``batch`` sequences of ``seq_len`` tokens
    ("compiled" convention): the per-token training count times the tokens plus the
    optimizer's update, what XLA's cost analysis of the jitted train step counts."""
    return batch * seq_len * train_flops_per_token(cfg, seq_len, "compiled") \
        + optimizer_flops_per_step(cfg)
