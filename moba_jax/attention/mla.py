"""Multi-head latent attention (MLA, DeepSeek-V2) as a model layer.

Keys and values of every head are expanded from one small per-token latent, so a
decoder caches ``kv_latent_dim + rope_dim`` numbers per token and layer instead of
``2 * n_heads * head_dim``:

    c_kv    = RMSNorm(W_dkv h)                    [B, T, d_c]      (the cached latent)
    k_nope  = W_uk c_kv,  v = W_uv c_kv           [B, T, H, d_h]   (per head)
    k_rope  = W_kr h                              [B, T, d_r]      (one for all heads; cached)
    q       = W_q h  or  W_uq RMSNorm(W_dq h)     [B, T, H, d_h + d_r] = [q_nope; q_rope]
    k       = [k_nope; k_rope]                    [B, T, H, d_h + d_r]
    o       = W_o softmax(q k^T / sqrt(d_h + d_r), causal) v

Options (``cfg.attention.mla``):

- ``kv_latent_dim`` (d_c), ``rope_dim`` (d_r, even; 0 = no decoupled key part),
  ``q_latent_dim`` (0 = a direct ``W_q``; > 0 = low-rank queries through a
  normalised latent of that width, as in DeepSeek-V2);
- ``rope``: True rotates ``q_rope`` and ``k_rope`` by position (rotary). False is
  the NoPE variant of Kimi Linear: the ``d_r`` part stays an unrotated key
  component shared by all heads and the layer ignores positions (position then
  comes from the KDA layers of the hybrid);
- ``implementation``: ``"xla"`` (``jax.nn.dot_product_attention``; it needs one
  head width for q, k and v, so v is zero-padded from ``d_h`` to ``d_h + d_r`` and
  the padding sliced off the output: the compiled FLOP count charges it),
  ``"blocked"`` (query blocks of ``query_block`` that skip the masked upper blocks,
  no padding; the fast path on CPU, see ``moba_jax/attention/full.py``) or
  ``"reference"`` (plain float32 softmax attention, the oracle).

Heads and widths come from the model config: ``cfg.n_heads`` heads of
``cfg.head_dim`` (= d_h); ``cfg.n_kv_heads`` does not apply (every head has its
own keys and values, expanded from the shared latent).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from kernels.causal import DEFAULT_QUERY_BLOCK, blocked_attention
from moba_jax import elementwise as ew
from moba_jax import layers
from moba_jax.attention.full import causal_pairs_per_token, compiled_keys_per_query
from moba_jax.attention.registry import register_attention
from moba_jax.checks import ConfigError, at_least, one_of, positive
from moba_jax.sharding import constrain

IMPLEMENTATIONS = ("reference", "xla", "blocked")


def latent_attention_reference(q_BTHE, k_BTHE, v_BTHD, *, scale: float):
    """Causal softmax attention in float32 where the key width E may exceed v's width D."""
    t = q_BTHE.shape[1]
    s = jnp.einsum("bthe,bshe->bhts", q_BTHE.astype(jnp.float32),
                   k_BTHE.astype(jnp.float32)) * scale
    s = jnp.where(jnp.tril(jnp.ones((t, t), bool)), s, -jnp.inf)
    p = jax.nn.softmax(s, axis=-1)
    o = jnp.einsum("bhts,bshd->bthd", p, v_BTHD.astype(jnp.float32))
    return o.astype(v_BTHD.dtype)


def latent_attention(q_BTHE, k_BTHE, v_BTHD, *, scale: float, implementation: str = "xla",
                     query_block: int = DEFAULT_QUERY_BLOCK):
    if implementation == "reference":
        return latent_attention_reference(q_BTHE, k_BTHE, v_BTHD, scale=scale)
    if implementation == "blocked":
        return blocked_attention(q_BTHE, k_BTHE, v_BTHD, scale=scale, query_block=query_block)
    if implementation == "xla":
        e, d = q_BTHE.shape[-1], v_BTHD.shape[-1]
        v = jnp.pad(v_BTHD, [(0, 0)] * 3 + [(0, e - d)]) if e > d else v_BTHD
        o = jax.nn.dot_product_attention(q_BTHE, k_BTHE, v, is_causal=True, scale=scale)
        return o[..., :d]
    raise ValueError(f"model.attention.mla.implementation={implementation!r}: "
                     f"choose one of {IMPLEMENTATIONS}")


# --- accounting ------------------------------------------------------------------

def _mla_dims(cfg):
    o = cfg.attention.mla
    return int(o.kv_latent_dim), int(o.rope_dim), int(o.q_latent_dim)


def mla_params(cfg) -> int:
    """Parameters of one MLA layer (latent projections, their norms, W_o)."""
    d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
    dc, dr, dq = _mla_dims(cfg)
    q = d * dq + dq + dq * h * (hd + dr) if dq else d * h * (hd + dr)
    kv = d * dc + dc + 2 * dc * h * hd + d * dr
    return q + kv + h * hd * d


def mla_projection_flops(cfg) -> float:
    """Per-token forward FLOPs of MLA's projections: q (direct or low-rank), the kv
    latent, the per-head key/value up-projections, the shared rope key and ``W_o``."""
    d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
    dc, dr, dq = _mla_dims(cfg)
    q = 2.0 * (d * dq + dq * h * (hd + dr)) if dq else 2.0 * d * h * (hd + dr)
    return q + 2.0 * (d * dc + 2 * dc * h * hd + d * dr) + 2.0 * h * hd * d


def mla_compiled(cfg, seq_len: int) -> tuple[float, float]:
    """Compiled per-token ``(forward, train)`` FLOPs of one MLA layer: the matmuls (3 x in
    training) over the keys the path scores, and the element-wise work
    (``moba_jax/elementwise.py``): the softmax, the RMSNorm of each latent, the rotary
    part of q and the shared key (``rope``), and in the backward the gradient sums of the
    vectors read by several projections (``x``; the kv latent) and of the shared
    rotary key broadcast to every head."""
    o = cfg.attention.mla
    h, hd, d = cfg.n_heads, cfg.head_dim, cfg.d_model
    dc, dr, dq = _mla_dims(cfg)
    scored = h * compiled_keys_per_query(o, seq_len)
    pv = hd + dr if o.implementation == "xla" else hd
    matmuls = mla_projection_flops(cfg) + scored * 2.0 * ((hd + dr) + pv)
    parts = [ew.softmax_attention(str(o.implementation), scored),
             ew.rmsnorm(dc, inner=True), ew.fanout(d, 3 if dr else 2), ew.fanout(dc, 2)]
    if dq:
        parts.append(ew.rmsnorm(dq, inner=True))
    if dr:
        parts.append((0.0, 2.0 * h * dr))
        if bool(o.rope):
            parts.append(ew.rotary((h + 1) * dr, dr))
    fwd, train = ew.add(*parts)
    return matmuls + fwd, 3.0 * matmuls + train


def mla_cache_per_token(cfg) -> int:
    """Numbers cached per token by one MLA layer when decoding: ``d_c + d_r``."""
    dc, dr, _ = _mla_dims(cfg)
    return dc + dr


@register_attention("mla")
class MLAttention(nnx.Module):
    """DeepSeek-V2 multi-head latent attention (see the module docstring)."""

    display_name = "MLA"
    colour_family = "Blues"

    @staticmethod
    def default_options() -> dict:
        return dict(kv_latent_dim=64, rope_dim=16, q_latent_dim=0, rope=True,
                    implementation="xla", query_block=DEFAULT_QUERY_BLOCK)

    @staticmethod
    def check_options(cfg) -> None:
        """Raises :class:`~moba_jax.checks.ConfigError` for options MLA cannot take."""
        o, at = cfg.attention.mla, "model.attention.mla"
        positive(f"{at}.kv_latent_dim", o.kv_latent_dim, f"give the key/value latent width, "
                 f"e.g. --config.{at}.kv_latent_dim=64", integer=True)
        at_least(f"{at}.rope_dim", o.rope_dim, 0, f"give an even rotary width >= 0, e.g. "
                 f"--config.{at}.rope_dim=16", integer=True)
        if o.rope_dim % 2:
            raise ConfigError(f"{at}.rope_dim", f"{o.rope_dim} is odd",
                              "rotary pairs need an even width, e.g. 16")
        if bool(o.rope) and o.rope_dim == 0:
            raise ConfigError(f"{at}.rope", "rope=True needs rope_dim > 0 (the rotated key part)",
                              f"set --config.{at}.rope_dim=16 or --config.{at}.rope=False")
        at_least(f"{at}.q_latent_dim", o.q_latent_dim, 0, "give the query latent width, or 0 "
                 "for a direct query projection", integer=True)
        one_of(f"{at}.implementation", str(o.implementation), IMPLEMENTATIONS)
        positive(f"{at}.query_block", o.get("query_block", DEFAULT_QUERY_BLOCK),
                 "give the blocked path's query block length, e.g. 128", integer=True)

    @staticmethod
    def param_count(cfg) -> int:
        return mla_params(cfg)

    @staticmethod
    def flops_per_token(cfg, seq_len: int, convention: str) -> float:
        """QK^T over ``head_dim + rope_dim`` and PV over ``head_dim`` per (head, key) pair.

        "compiled": the dense paths score all ``T`` keys, the blocked path each query
        block's key prefix; the xla path zero-pads v to
        ``head_dim + rope_dim`` (``jax.nn.dot_product_attention`` needs one width), so
        its PV product is that wide too. Plus the element-wise work: the softmax, the
        latents' norms and the rotary part (:func:`mla_compiled`).
        """
        if convention == "compiled":
            return mla_compiled(cfg, seq_len)[0]
        h, hd = cfg.n_heads, cfg.head_dim
        _, dr, _ = _mla_dims(cfg)
        keys, pv = causal_pairs_per_token(seq_len), hd
        return mla_projection_flops(cfg) + 2.0 * h * keys * ((hd + dr) + pv)

    @staticmethod
    def train_flops_per_token(cfg, seq_len: int, convention: str) -> float:
        """3 x forward; in "compiled" the matmuls 3 x and the element-wise forward plus
        its backward (:func:`mla_compiled`)."""
        if convention == "compiled":
            return mla_compiled(cfg, seq_len)[1]
        return 3.0 * MLAttention.flops_per_token(cfg, seq_len, convention)

    def __init__(self, cfg, layer_idx: int, *, rngs: nnx.Rngs):
        opts = cfg.attention.mla
        d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
        self.n_heads, self.head_dim = h, hd
        self.kv_latent_dim = dc = int(opts.kv_latent_dim)
        self.rope_dim = dr = int(opts.rope_dim)
        self.q_latent_dim = dq = int(opts.q_latent_dim)
        self.use_rope = bool(opts.rope)
        self.implementation = str(opts.implementation)
        self.query_block = int(opts.get("query_block", DEFAULT_QUERY_BLOCK))
        self.rope_theta = float(cfg.rope_theta)
        MLAttention.check_options(cfg)
        dtype = jnp.dtype(cfg.dtype)
        kw = dict(rngs=rngs, dtype=dtype)
        q_out = (h, hd + dr)
        q_axes = ("q_heads", "head_dim")
        if dq:
            self.wq_down = layers.Dense(d, dq, in_axes=("embed",), out_axes=("q_latent",), **kw)
            self.q_norm = layers.RMSNorm(dq, eps=cfg.norm_eps, rngs=rngs)
            self.wq_up = layers.Dense(dq, q_out, in_axes=("q_latent",), out_axes=q_axes, **kw)
        else:
            self.wq = layers.Dense(d, q_out, in_axes=("embed",), out_axes=q_axes, **kw)
        self.wkv_down = layers.Dense(d, dc, in_axes=("embed",), out_axes=("kv_latent",), **kw)
        self.kv_norm = layers.RMSNorm(dc, eps=cfg.norm_eps, rngs=rngs)
        self.wk_up = layers.Dense(dc, (h, hd), in_axes=("kv_latent",), out_axes=q_axes, **kw)
        self.wv_up = layers.Dense(dc, (h, hd), in_axes=("kv_latent",), out_axes=q_axes, **kw)
        if dr:
            self.wk_rope = layers.Dense(d, dr, in_axes=("embed",), out_axes=("head_dim",), **kw)
        self.wo = layers.Dense((h, hd), d, in_axes=q_axes, out_axes=("embed",),
                               init_scale=(2 * cfg.n_layers) ** -0.5, **kw)

    def cache_size_per_token(self) -> int:
        """Numbers a decoder caches per token for this layer: ``d_c + d_r``."""
        return self.kv_latent_dim + self.rope_dim

    @property
    def scale(self) -> float:
        return (self.head_dim + self.rope_dim) ** -0.5

    def project(self, x_BTD, positions_BT):
        """``q [B,T,H,d_h+d_r]``, ``k [B,T,H,d_h+d_r]``, ``v [B,T,H,d_h]`` (what attention sees)."""
        if self.q_latent_dim:
            q = self.wq_up(self.q_norm(self.wq_down(x_BTD)))
        else:
            q = self.wq(x_BTD)
        c_kv = self.kv_norm(self.wkv_down(x_BTD))                       # [B, T, d_c]
        k_nope = self.wk_up(c_kv)                                       # [B, T, H, d_h]
        v = self.wv_up(c_kv)
        if self.rope_dim:
            hd = self.head_dim
            q_nope, q_rope = q[..., :hd], q[..., hd:]
            k_rope = self.wk_rope(x_BTD)[:, :, None, :]                 # [B, T, 1, d_r]
            if self.use_rope:
                q_rope = layers.rotary(q_rope, positions_BT, self.rope_theta)
                k_rope = layers.rotary(k_rope, positions_BT, self.rope_theta)
            q = jnp.concatenate([q_nope, q_rope], axis=-1)
            k_rope = jnp.broadcast_to(k_rope, k_nope.shape[:3] + (self.rope_dim,))
            k = jnp.concatenate([k_nope, k_rope.astype(k_nope.dtype)], axis=-1)
        else:
            k = k_nope
        return q, k, v

    def __call__(self, x_BTD, positions_BT):
        q, k, v = self.project(x_BTD, positions_BT)
        q = constrain(q, ("batch", "seq", "q_heads", "head_dim"))
        k = constrain(k, ("batch", "seq", "q_heads", "head_dim"))
        v = constrain(v, ("batch", "seq", "q_heads", "head_dim"))
        o = latent_attention(q, k, v, scale=self.scale, implementation=self.implementation,
                             query_block=int(self.query_block))
        return self.wo(constrain(o, ("batch", "seq", "q_heads", "head_dim")))

    # --- incremental decoding -------------------------------------------------
    # The cache is the compressed one: the normalised latent ``c_kv`` (d_c) and
    # the shared positional key ``k_rope`` (d_r, stored already rotated) per
    # token; per-head keys and values are re-expanded from it at each step.

    def init_cache(self, batch: int, max_len: int) -> dict:
        dtype = self.wkv_down.dtype
        cache = {"c_kv": jnp.zeros((batch, max_len, self.kv_latent_dim), dtype)}
        if self.rope_dim:
            cache["k_rope"] = jnp.zeros((batch, max_len, self.rope_dim), dtype)
        return cache

    def step(self, x_BSD, positions_BS, cache: dict, start):
        if self.q_latent_dim:
            q = self.wq_up(self.q_norm(self.wq_down(x_BSD)))
        else:
            q = self.wq(x_BSD)
        c_new = self.kv_norm(self.wkv_down(x_BSD))
        new = {"c_kv": jax.lax.dynamic_update_slice_in_dim(
            cache["c_kv"], c_new.astype(cache["c_kv"].dtype), start, 1)}
        k_nope = self.wk_up(new["c_kv"])                                 # [B, L, H, d_h]
        v = self.wv_up(new["c_kv"])
        if self.rope_dim:
            hd = self.head_dim
            q_nope, q_rope = q[..., :hd], q[..., hd:]
            kr = self.wk_rope(x_BSD)[:, :, None, :]
            if self.use_rope:
                q_rope = layers.rotary(q_rope, positions_BS, self.rope_theta)
                kr = layers.rotary(kr, positions_BS, self.rope_theta)
            q = jnp.concatenate([q_nope, q_rope], axis=-1)
            new["k_rope"] = jax.lax.dynamic_update_slice_in_dim(
                cache["k_rope"], kr[:, :, 0].astype(cache["k_rope"].dtype), start, 1)
            k_rope = jnp.broadcast_to(new["k_rope"][:, :, None, :], k_nope.shape[:3] + (self.rope_dim,))
            k = jnp.concatenate([k_nope, k_rope.astype(k_nope.dtype)], axis=-1)
        else:
            k = k_nope
        s_len = x_BSD.shape[1]
        q_pos = start + jnp.arange(s_len)
        mask = jnp.arange(k.shape[1])[None, :] <= q_pos[:, None]         # [S, L]
        s = jnp.einsum("bshe,blhe->bhsl", q.astype(jnp.float32), k.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST) * self.scale
        p = jax.nn.softmax(jnp.where(mask, s, -jnp.inf), axis=-1)
        o = jnp.einsum("bhsl,blhd->bshd", p, v.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST).astype(v.dtype)
        return self.wo(o), new
