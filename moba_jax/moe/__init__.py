"""Mixture-of-experts MLPs: config (:mod:`.config`), routing (:mod:`.routing`), the layer
(:mod:`.layer`), router statistics (:mod:`.stats`) and accounting (:mod:`.cost`)."""
from moba_jax.moe.config import (check_moe_options, default_moe_options, expert_dim, has_moe,
                                 mlp_kinds)
from moba_jax.moe.layer import MoE, RouterBias

__all__ = ["MoE", "RouterBias", "check_moe_options", "default_moe_options", "expert_dim",
           "has_moe", "mlp_kinds"]
