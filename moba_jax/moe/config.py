"""The model-config side of mixture-of-experts MLPs: which layers are MoE, their options.

Model config fields (defaults in :func:`default_moe_options`, checked by
:func:`check_moe_options`):

- ``mlp_pattern``: comma-separated MLP kinds, ``"dense"`` (the SwiGLU MLP) or
  ``"moe"``, cycled over the layers like ``attention_pattern`` (``"dense"``: every
  layer dense, the default everywhere);
- ``first_k_dense``: the first K layers are dense whatever the pattern says
  (DeepSeek-V3 keeps its first 3 layers dense; Moonlight and Kimi Linear their first
  one, ``first_k_dense_replace=1`` in their released configs);
- ``moe.<option>``: the options below.

Configs recorded before these fields existed read as all-dense (``cfg.get``).
"""
from __future__ import annotations

from moba_jax.checks import ConfigError, at_least, one_of, positive

MLP_KINDS = ("dense", "moe")
SCORES = ("sigmoid", "softmax")
IMPLEMENTATIONS = ("ragged", "dense")


def default_moe_options() -> dict:
    """Options of every MoE layer of a model (``cfg.moe``).

    - ``n_experts``: routed experts; ``top_k``: experts each token is sent to;
    - ``n_shared``: shared experts every token goes through (one SwiGLU of width
      ``n_shared * expert_dim``, as DeepSeekMoE implements them);
    - ``expert_dim``: hidden width of one expert; 0 means ``mlp_dim // (top_k +
      n_shared)``, so the activated MLP width stays about the dense model's
      (fine-grained experts, DeepSeekMoE's segmentation);
    - ``score``: ``"sigmoid"`` (DeepSeek-V3, Moonlight, Kimi Linear) or
      ``"softmax"`` (DeepSeekMoE / DeepSeek-V2, Switch) router scores;
    - ``normalize``: divide the chosen experts' scores by their sum (DeepSeek-V3
      eq. 13; ``moe_renormalize`` / ``norm_topk_prob`` in Moonlight's and Kimi
      Linear's configs); ``route_scale``: then multiply them by this factor (the
      released configs' ``routed_scaling_factor``: 2.446 for Moonlight and Kimi
      Linear, 2.5 for DeepSeek-V3; not stated in the papers' text);
    - ``bias_update_rate``: the auxiliary-loss-free balancing of DeepSeek-V3: a
      per-expert bias added to the scores for the top-k choice only, moved by this
      much per step against the sign of the expert's load imbalance (the paper's
      update speed gamma, 0.001); 0 turns it off (the bias stays 0);
    - ``aux_loss_coef``: weight of the sequence-wise balance loss (DeepSeek-V3's
      complementary loss uses alpha = 1e-4; with softmax scores and no bias it is the
      expert-level balance loss of DeepSeekMoE / Switch, alpha around 1e-2); 0: none;
    - ``implementation``: ``"ragged"`` (dropless: assignments sorted by expert, one
      ``jax.lax.ragged_dot`` per projection) or ``"dense"`` (every expert on every
      token, weighted by the gates: the same function, E/top_k times the routed work;
      on CPU cheaper than ``"ragged"``, whose XLA:CPU lowering expands to all experts).
    """
    return dict(n_experts=8, top_k=2, n_shared=1, expert_dim=0, score="sigmoid",
                normalize=True, route_scale=1.0, bias_update_rate=1e-3, aux_loss_coef=0.0,
                implementation="ragged")


def mlp_kinds(cfg) -> list[str]:
    """The MLP kind (``"dense"`` or ``"moe"``) of every layer of a model config."""
    pattern = [p.strip() for p in str(cfg.get("mlp_pattern", "dense")).split(",") if p.strip()]
    if not pattern:
        raise ConfigError("model.mlp_pattern", "is empty", "give e.g. 'dense', 'moe' or 'dense,moe'")
    for p in pattern:
        if p not in MLP_KINDS:
            raise ConfigError("model.mlp_pattern", f"unknown MLP kind {p!r} in "
                              f"{cfg.mlp_pattern!r}", f"use kinds from {', '.join(MLP_KINDS)}, "
                              "comma-separated")
    first = int(cfg.get("first_k_dense", 0))
    if not 0 <= first <= cfg.n_layers:
        raise ConfigError("model.first_k_dense", f"{first} is outside [0, n_layers="
                          f"{cfg.n_layers}]", "give a number of leading dense layers")
    return ["dense" if i < first else pattern[i % len(pattern)] for i in range(cfg.n_layers)]


def has_moe(cfg) -> bool:
    return "moe" in mlp_kinds(cfg)


def expert_dim(cfg) -> int:
    """Hidden width of one routed (and of each shared) expert."""
    m = cfg.moe
    return int(m.expert_dim) or max(1, cfg.mlp_dim // (m.top_k + m.n_shared))


def check_moe_options(cfg) -> None:
    """Raises :class:`ConfigError` for MoE options the layer cannot take (only when some
    layer is MoE: a dense model's ``moe`` block is never read)."""
    if not has_moe(cfg):
        return
    m = cfg.moe
    for f in ("n_experts", "top_k"):
        positive(f"model.moe.{f}", m[f], "give a positive integer", integer=True)
    for f in ("n_shared", "expert_dim"):
        at_least(f"model.moe.{f}", m[f], 0, "give an integer >= 0 (0: none / derived)",
                 integer=True)
    if m.top_k > m.n_experts:
        raise ConfigError("model.moe.top_k", f"{m.top_k} exceeds model.moe.n_experts="
                          f"{m.n_experts}", "route each token to at most every expert")
    one_of("model.moe.score", str(m.score), SCORES)
    one_of("model.moe.implementation", str(m.implementation), IMPLEMENTATIONS)
    positive("model.moe.route_scale", m.route_scale, "give a positive factor, e.g. 1.0")
    at_least("model.moe.bias_update_rate", m.bias_update_rate, 0,
             "give a rate >= 0 (0: no bias balancing), e.g. 1e-3")
    at_least("model.moe.aux_loss_coef", m.aux_loss_coef, 0,
             "give a weight >= 0 (0: no balance loss), e.g. 1e-4")
