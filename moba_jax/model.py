"""A decoder-only Transformer language model in Flax NNX.

Pre-norm blocks ``x + Attn(RMSNorm(x))`` then ``x + SwiGLU(RMSNorm(x))``; the
attention of each layer is chosen by :func:`layer_kinds` from the config's
pattern and built through the attention registry, so MoBA, KDA, MLA and full
attention mix freely in one model.

Model config fields (see :func:`default_model_config`):

- ``vocab_size, d_model, n_layers, n_heads, n_kv_heads, head_dim, mlp_dim``
- ``attention_pattern``: comma-separated kinds cycled over the layers
  (layer ``i`` gets ``pattern[i % len(pattern)]``), e.g. ``"full"``,
  ``"kda,kda,kda,mla"``. ``n_layers`` must be at least the pattern length (so
  every kind of a hybrid is present); when it is not a multiple, the last
  repetition is cut short (18 layers of ``"kda,kda,kda,mla"``: 14 KDA, 4 MLA);
- ``full_attention_last_n``: the last N layers use ``"full"`` whatever the
  pattern says (MoBA's layer-wise hybrid);
- ``attention.<kind>``: options of each kind (``implementation``, ``rope``, ...);
- ``mlp_pattern``, ``first_k_dense``, ``moe.<option>``: which layers' MLP is a
  mixture of experts and its options (``moba_jax/moe/config.py``; default: all dense);
- ``tie_embeddings``, ``dtype`` (compute dtype), ``rope_theta``, ``norm_eps``.

:meth:`TransformerLM.forward_with_aux` also returns the MoE layers' router statistics
(``moba_jax/moe/stats.py``), which the train step turns into the balance loss and metrics.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from moba_jax import layers
from moba_jax.attention import default_options, get_attention
from moba_jax.moe import MoE, check_moe_options, default_moe_options, mlp_kinds
from moba_jax.moe import stats as moe_stats
from moba_jax.sharding import constrain
from moba_jax.checks import ConfigError, one_of, positive


class ModelConfigError(ValueError):
    """A model config the model cannot take."""


def default_model_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        vocab_size=259,
        d_model=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        head_dim=32,
        mlp_dim=384,
        attention_pattern="full",
        full_attention_last_n=0,
        tie_embeddings=True,
        dtype="float32",
        rope_theta=10000.0,
        norm_eps=1e-6,
        attention=default_options(),
        mlp_pattern="dense",
        first_k_dense=0,
        moe=default_moe_options(),
    ))


def layer_kinds(cfg) -> list[str]:
    """The attention kind of every layer, after the pattern and hybrid rules."""
    pattern = [p.strip() for p in str(cfg.attention_pattern).split(",") if p.strip()]
    if not pattern:
        raise ModelConfigError("model.attention_pattern is empty; give e.g. 'full' or 'kda,kda,kda,mla'")
    if cfg.n_layers < len(pattern):
        raise ModelConfigError(
            f"model.n_layers={cfg.n_layers} is shorter than the attention pattern "
            f"{cfg.attention_pattern!r} ({len(pattern)} layers): the hybrid would lose its "
            "last kinds; use at least that many layers or a shorter pattern")
    kinds = [pattern[i % len(pattern)] for i in range(cfg.n_layers)]
    last = int(cfg.get("full_attention_last_n", 0))
    if not 0 <= last <= cfg.n_layers:
        raise ModelConfigError(f"model.full_attention_last_n={last} must be in [0, n_layers={cfg.n_layers}]")
    for i in range(cfg.n_layers - last, cfg.n_layers):
        kinds[i] = "full"
    for k in kinds:
        get_attention(k)  # raises UnknownAttentionError naming the known kinds
    return kinds


def validate_model_config(cfg) -> None:
    """Raises :class:`~moba_jax.checks.ConfigError` naming the field for a model shape
    the model cannot take (its attention kinds' options: :func:`~moba_jax.validation.check_model_options`)."""
    for f in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "mlp_dim"):
        positive(f"model.{f}", cfg[f], f"give a positive integer, e.g. "
                 f"--config.model.{f}={default_model_config()[f]}", integer=True)
    if cfg.n_heads % cfg.n_kv_heads:
        raise ConfigError("model.n_kv_heads", f"{cfg.n_kv_heads} does not divide "
                          f"model.n_heads={cfg.n_heads}", "grouped-query attention needs a "
                          "divisor of the query heads, e.g. --config.model.n_kv_heads=1")
    if cfg.head_dim % 2:
        raise ConfigError("model.head_dim", f"{cfg.head_dim} is odd",
                          "rotary positions rotate pairs of features: give an even size")
    one_of("model.dtype", str(cfg.dtype), ("float32", "bfloat16"))
    layer_kinds(cfg)
    check_moe_options(cfg)


class Block(nnx.Module):
    def __init__(self, cfg, layer_idx: int, kind: str, *, rngs: nnx.Rngs, mlp_kind: str = "dense"):
        dtype = jnp.dtype(cfg.dtype)
        self.attn_norm = layers.RMSNorm(cfg.d_model, eps=cfg.norm_eps, rngs=rngs)
        self.attn = get_attention(kind)(cfg, layer_idx, rngs=rngs)
        self.mlp_norm = layers.RMSNorm(cfg.d_model, eps=cfg.norm_eps, rngs=rngs)
        self.is_moe = mlp_kind == "moe"
        if self.is_moe:
            self.mlp = MoE(cfg, rngs=rngs)
        else:
            self.mlp = layers.SwiGLU(cfg.d_model, cfg.mlp_dim, rngs=rngs, dtype=dtype,
                                     out_scale=(2 * cfg.n_layers) ** -0.5)

    def forward(self, x, positions):
        """``(x, router statistics or None)``."""
        x = x + self.attn(self.attn_norm(x), positions)
        x = constrain(x, ("batch", "seq", "embed"))
        stats = None
        if self.is_moe:
            y, stats = self.mlp.forward(self.mlp_norm(x))
        else:
            y = self.mlp(self.mlp_norm(x))
        return constrain(x + y, ("batch", "seq", "embed")), stats

    def __call__(self, x, positions):
        return self.forward(x, positions)[0]


class TransformerLM(nnx.Module):
    """``logits = TransformerLM(cfg)(tokens_BT, positions_BT)``, logits float32 ``[B, T, V]``."""

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        validate_model_config(cfg)
        dtype = jnp.dtype(cfg.dtype)
        self.kinds = tuple(layer_kinds(cfg))
        self.mlp_kinds = tuple(mlp_kinds(cfg))
        self.embed = layers.Embed(cfg.vocab_size, cfg.d_model, rngs=rngs, dtype=dtype)
        self.blocks = nnx.List([Block(cfg, i, k, rngs=rngs, mlp_kind=m)
                                for i, (k, m) in enumerate(zip(self.kinds, self.mlp_kinds))])
        self.final_norm = layers.RMSNorm(cfg.d_model, eps=cfg.norm_eps, rngs=rngs)
        self.tie_embeddings = bool(cfg.tie_embeddings)
        if not self.tie_embeddings:
            self.head = layers.Dense(cfg.d_model, cfg.vocab_size, in_axes=("embed",),
                                     out_axes=("vocab",), rngs=rngs, dtype=dtype)

    def __call__(self, tokens_BT, positions_BT=None):
        return self.forward_embeddings(self.embed(tokens_BT), positions_BT)

    def forward_with_aux(self, tokens_BT, positions_BT=None):
        """``(logits, aux)``: ``aux`` is ``{}`` for a dense model, else the MoE layers'
        router statistics (:func:`moba_jax.moe.stats.stack`)."""
        return self.forward_embeddings_with_aux(self.embed(tokens_BT), positions_BT)

    def forward_embeddings(self, x_BTD, positions_BT=None):
        """Logits from input embeddings (used by the causality test and probes)."""
        return self.forward_embeddings_with_aux(x_BTD, positions_BT)[0]

    def forward_embeddings_with_aux(self, x_BTD, positions_BT=None):
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(x_BTD.shape[1]), x_BTD.shape[:2])
        x = constrain(x_BTD, ("batch", "seq", "embed"))
        stats = []
        for block in self.blocks:
            x, s = block.forward(x, positions_BT)
            if s is not None:
                stats.append(s)
        x = self.final_norm(x)
        logits = self.embed.attend(x) if self.tie_embeddings else self.head(x)
        return constrain(logits.astype(jnp.float32), ("batch", "seq", "vocab")), moe_stats.stack(stats)

    def update_router_biases(self, load_LE) -> None:
        """Moves each MoE layer's balancing bias by its load ``load_LE[l]`` (MoE layers in
        order; :meth:`moba_jax.moe.MoE.update_bias`)."""
        moe = [b.mlp for b in self.blocks if b.is_moe]
        for layer, load in zip(moe, load_LE):
            layer.update_bias(load)


def param_counts(params) -> dict[str, int]:
    """Total and non-embedding parameter counts of a (pure-dict) parameter tree.

    Non-embedding = everything except the token embedding table and an untied
    output head (Kaplan et al.'s N); this is the N of the 6ND convention.
    """
    total = 0
    embedding = 0
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        n = int(leaf.size)
        total += n
        keys = [getattr(p, "key", getattr(p, "name", None)) for p in path]
        if "embed" in keys[:1] or "head" in keys[:1]:
            embedding += n
    return {"total": total, "non_embedding": total - embedding, "embedding": embedding}
