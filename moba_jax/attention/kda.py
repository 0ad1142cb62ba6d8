"""Kimi Delta Attention (KDA) as a model layer (Kimi Linear, arXiv 2510.26692).

The layer around the recurrent op :func:`kernels.kda.kda` (``shared/design/kda.md``,
"Layer parameterisation"), with ``H = cfg.n_heads`` heads and ``K = V = cfg.head_dim``:

    q, k   = L2Norm(SiLU(ShortConv(W_{q,k} x)))        [B, T, H, K]
    v      = SiLU(ShortConv(W_v x))                     [B, T, H, V]
    g      = -exp(A_log[h]) * softplus(W_fup W_fdown x + dt_bias)    (log-decay, <= 0)
    beta   = sigmoid(W_beta x)                          [B, T, H], float32
    o      = kda(q, k, v, g, beta)                      (state [B, H, K, V], float32)
    y      = W_o( sigmoid(W_gup W_gdown x) * RMSNorm_per_head(o) )

``ShortConv`` is a depthwise causal 1-D convolution of ``conv_size`` taps (no bias),
one per q/k/v channel. The decay and output-gate projections are low rank with
rank ``head_dim``. ``A_log`` (one per head) starts at ``log U(1, 16)`` and
``dt_bias`` (one per head and key channel) at ``softplus^-1(dt)``,
``dt ~ LogUniform[1e-3, 1e-1]``; neither is weight-decayed. The per-head output
norm has one learned scale of width ``head_dim`` shared by the heads.

Positions are ignored: the layer is causal by construction and has no rotary
(``rope`` must stay False). Documents packed into one row share the recurrent
state (and the short convolution's window): nothing is reset at a document
boundary, exactly as full attention does not mask across packed documents.

Options (``cfg.attention.kda``): ``implementation`` (``"xla"`` chunked, default;
``"pallas"``; ``"reference"`` token recurrence), ``chunk_size`` (64),
``conv_size`` (4), ``rope`` (False).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from kernels.kda import IMPLEMENTATIONS, kda, l2_normalize
from kernels.kda import pallas as kda_pallas
from kernels.kda.cost import chunk_backward_flops, chunk_flops
from moba_jax import elementwise as ew
from moba_jax import layers
from moba_jax.attention import fallback
from moba_jax.attention.registry import register_attention
from moba_jax.checks import ConfigError, one_of, positive
from moba_jax.sharding import constrain

A_INIT_RANGE = (1.0, 16.0)     # A = exp(A_log) ~ U(1, 16)
DT_INIT_RANGE = (1e-3, 1e-1)   # softplus(dt_bias) ~ LogUniform(1e-3, 1e-1)


def inverse_softplus(y):
    """``softplus^-1(y) = y + log(-expm1(-y))`` (stable for small y)."""
    return y + jnp.log(-jnp.expm1(-y))


def _a_log_init(key, shape, dtype):
    lo, hi = A_INIT_RANGE
    return jnp.log(jax.random.uniform(key, shape, dtype, lo, hi))


def _dt_bias_init(key, shape, dtype):
    lo, hi = DT_INIT_RANGE
    log_dt = jax.random.uniform(key, shape, jnp.float32, math.log(lo), math.log(hi))
    return inverse_softplus(jnp.exp(log_dt)).astype(dtype)


class ShortConv(nnx.Module):
    """Depthwise causal conv1d over time: ``y_t = sum_i w_i * x_{t - size + 1 + i}``.

    Input ``[B, T, H, D]``; one filter of ``size`` taps per (head, channel), no bias.
    """

    def __init__(self, n_heads: int, head_dim: int, size: int, *, rngs: nnx.Rngs, dtype):
        self.size = size
        self.dtype = dtype
        self.kernel = layers.param(rngs, layers.fan_in_init(size), (size, n_heads, head_dim),
                                   ("conv", "q_heads", "head_dim"))

    def step(self, x_BSHD, window_BWHD):
        """Convolution of S new inputs given the previous ``size - 1`` inputs.

        Returns ``(y_BSHD, new_window)``; a zero window is the sequence start.
        """
        s = x_BSHD.shape[1]
        w = self.kernel[...].astype(self.dtype)
        full = jnp.concatenate([window_BWHD.astype(self.dtype), x_BSHD.astype(self.dtype)], axis=1)
        y = full[:, 0:s] * w[0]
        for i in range(1, self.size):
            y = y + full[:, i:i + s] * w[i]
        return y, full[:, full.shape[1] - (self.size - 1):]

    def __call__(self, x_BTHD):
        t = x_BTHD.shape[1]
        w = self.kernel[...].astype(self.dtype)
        x = jnp.pad(x_BTHD.astype(self.dtype), [(0, 0), (self.size - 1, 0), (0, 0), (0, 0)])
        y = x[:, 0:t] * w[0]
        for i in range(1, self.size):
            y = y + x[:, i:i + t] * w[i]
        return y


# --- accounting ------------------------------------------------------------------

def kda_params(cfg) -> int:
    """Parameters of one KDA layer: W_q, W_k, W_v, three short convs, the low-rank
    decay and gate projections, A_log, dt_bias, W_beta, the output norm, W_o."""
    d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
    conv = int(cfg.attention.kda.conv_size)
    return (3 * d * h * hd + 3 * conv * h * hd + 2 * (d * hd + hd * h * hd)
            + h + h * hd + d * h + hd + h * hd * d)


def kda_projection_flops(cfg) -> float:
    """Per-token forward FLOPs around the recurrence: q/k/v/o projections, the short
    convolutions (one multiply-add per tap and channel), the low-rank decay and gate
    and the beta projection."""
    d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
    conv = int(cfg.attention.kda.conv_size)
    return (2.0 * 4 * d * h * hd + 2.0 * 3 * conv * h * hd
            + 2.0 * 2 * (d * hd + hd * h * hd) + 2.0 * d * h)


def kda_core_exact_per_token(head_dim: int, chunk: int, seq_len: int) -> float:
    """kda.md's cost of the chunked algorithm per head: ``6 T d^2 + 3 T C d + T C^2``
    per sequence, here per token; a sequence shorter than a chunk is one chunk of T."""
    c = min(chunk, seq_len)
    return 6.0 * head_dim ** 2 + 3.0 * c * head_dim + c * c


def kda_core_compiled_per_token(cfg, seq_len: int) -> float:
    """Per-token FLOPs of the recurrence as the configured path computes it (all heads)."""
    o = cfg.attention.kda
    h, k = cfg.n_heads, cfg.head_dim
    if o.implementation == "reference":
        # Token scan: decay, S^T k, delta update (outer product), S^T q.
        return h * (2.0 * k * k + 2.0 * k * k + 3.0 * k * k + 2.0 * k * k)
    c = int(o.chunk_size)
    n = -(-seq_len // c)
    per_chunk = sum(chunk_flops(c, k).values())
    return h * n * per_chunk / seq_len


def kda_core_backward_compiled_per_token(cfg, seq_len: int) -> float:
    """Per-token FLOPs of the recurrence's backward as the configured path computes it
    (all heads): the chunked path's own backward (:func:`kernels.kda.cost.chunk_backward_flops`),
    else twice the forward (autodiff of the token scan; the Pallas backward kernels)."""
    o = cfg.attention.kda
    if o.implementation != "xla":
        return 2.0 * kda_core_compiled_per_token(cfg, seq_len)
    c = int(o.chunk_size)
    n = -(-seq_len // c)
    per_chunk = sum(chunk_backward_flops(c, cfg.head_dim).values())
    return cfg.n_heads * n * per_chunk / seq_len


def kda_layer_elementwise(cfg) -> tuple[float, float]:
    """Compiled per-token element-wise FLOPs ``(forward, train)`` of a KDA layer around
    the recurrence (``moba_jax/elementwise.py``): SiLU and L2 norm of q, k (SiLU of v),
    the decay's softplus, beta's and the output gate's sigmoids, the per-head output
    norm and the gate product; in the backward also the gradient sum of ``x`` over its
    six readers (``W_q, W_k, W_v``, the decay, beta and gate projections)."""
    h, e = cfg.n_heads, cfg.n_heads * cfg.head_dim
    return ew.add(ew.per_element(ew.SILU, 3 * e), ew.per_element(ew.L2_NORM, 2 * e),
                  ew.per_element(ew.SOFTPLUS_DECAY, e), ew.per_element(ew.SIGMOID, h + e),
                  ew.per_element(ew.GATE_PRODUCT, e), ew.rmsnorm(cfg.head_dim, h, inner=True),
                  ew.fanout(cfg.d_model, 6))


def kda_uncounted_by_xla(cfg, seq_len: int, train: bool = False) -> float:
    """Per-token FLOPs of the "compiled" KDA count that XLA's CPU cost analysis does
    not see: the scan body beyond its first trip (with ``train``, the backward's reverse
    scan's too). Used by the FLOP tests to compare like with like; see
    :func:`kernels.kda.cost.chunk_flops`. This holds while the sequence
    runs as one segment (``kernels.kda.cost.num_segments``: up to about 1 MiB per q-sized
    float32 tensor, batch x seq_len x heads x head_dim x 4 bytes); a longer input runs
    as s segments, each with its own scan, and XLA then sees s trips."""
    o = cfg.attention.kda
    if o.implementation != "xla":
        raise ValueError("kda_uncounted_by_xla describes the chunked 'xla' path only")
    c = int(o.chunk_size)
    n = -(-seq_len // c)
    body = chunk_flops(c, cfg.head_dim)["scan"]
    if train:
        body += chunk_backward_flops(c, cfg.head_dim)["scan"]
    return cfg.n_heads * (n - 1) * body / seq_len


@register_attention("kda")
class KDAttention(nnx.Module):
    """Kimi Delta Attention layer (see the module docstring)."""

    display_name = "KDA"
    colour_family = "Reds"

    @staticmethod
    def default_options() -> dict:
        return dict(implementation="xla", chunk_size=64, conv_size=4, rope=False)

    @staticmethod
    def check_options(cfg) -> None:
        """Raises :class:`~moba_jax.checks.ConfigError` for options KDA cannot take:
        the chunk length must be one the kernels accept (a power of two >= 16)."""
        o, at = cfg.attention.kda, "model.attention.kda"
        one_of(f"{at}.implementation", str(o.implementation), IMPLEMENTATIONS)
        c = o.chunk_size
        positive(f"{at}.chunk_size", c, f"give a power of two >= 16, e.g. "
                 f"--config.{at}.chunk_size=64", integer=True)
        if c < 16 or c & (c - 1):
            raise ConfigError(f"{at}.chunk_size", f"{c} is not a power of two >= 16",
                              f"the kernels need one, e.g. --config.{at}.chunk_size=64")
        positive(f"{at}.conv_size", o.conv_size, f"give the short-convolution width, e.g. "
                 f"--config.{at}.conv_size=4", integer=True)
        if bool(o.get("rope", False)):
            raise ConfigError(f"{at}.rope", "KDA has no rotary positions (its recurrence is "
                              "causal and position-aware by construction)",
                              f"leave --config.{at}.rope=False")

    @staticmethod
    def param_count(cfg) -> int:
        return kda_params(cfg)

    @staticmethod
    def flops_per_token(cfg, seq_len: int, convention: str) -> float:
        """Projections around the recurrence plus the recurrence itself: kda.md's
        chunked cost ("exact"), or what the configured path computes ("compiled", with
        the layer's element-wise work, :func:`kda_layer_elementwise`)."""
        if convention == "compiled":
            return (kda_projection_flops(cfg) + kda_core_compiled_per_token(cfg, seq_len)
                    + kda_layer_elementwise(cfg)[0])
        core = cfg.n_heads * kda_core_exact_per_token(
            cfg.head_dim, int(cfg.attention.kda.chunk_size), seq_len)
        return kda_projection_flops(cfg) + core

    @staticmethod
    def train_flops_per_token(cfg, seq_len: int, convention: str) -> float:
        """3 x forward; in "compiled" the projections 3 x, the recurrence's forward and
        its own backward, and the layer's element-wise forward plus backward."""
        if convention != "compiled":
            return 3.0 * KDAttention.flops_per_token(cfg, seq_len, convention)
        return (3.0 * kda_projection_flops(cfg) + kda_core_compiled_per_token(cfg, seq_len)
                + kda_core_backward_compiled_per_token(cfg, seq_len)
                + kda_layer_elementwise(cfg)[1])

    def __init__(self, cfg, layer_idx: int, *, rngs: nnx.Rngs):
        opts = cfg.attention.kda
        d, h, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
        self.n_heads, self.head_dim = h, hd
        self.chunk_size = int(opts.chunk_size)
        conv_size = int(opts.conv_size)
        KDAttention.check_options(cfg)
        self.implementation = fallback.resolve(
            "model.attention.kda.implementation", str(opts.implementation),
            kda_pallas.unsupported_reason(hd, hd, self.chunk_size)
            if opts.implementation == "pallas" else None)
        dtype = jnp.dtype(cfg.dtype)
        kw = dict(rngs=rngs, dtype=dtype)
        heads = ("q_heads", "head_dim")
        self.wq = layers.Dense(d, (h, hd), in_axes=("embed",), out_axes=heads, **kw)
        self.wk = layers.Dense(d, (h, hd), in_axes=("embed",), out_axes=heads, **kw)
        self.wv = layers.Dense(d, (h, hd), in_axes=("embed",), out_axes=heads, **kw)
        self.conv_q = ShortConv(h, hd, conv_size, **kw)
        self.conv_k = ShortConv(h, hd, conv_size, **kw)
        self.conv_v = ShortConv(h, hd, conv_size, **kw)
        # Decay: low rank (rank head_dim), per head and key channel.
        self.wf_down = layers.Dense(d, hd, in_axes=("embed",), out_axes=("kda_rank",), **kw)
        self.wf_up = layers.Dense(hd, (h, hd), in_axes=("kda_rank",), out_axes=heads, **kw)
        self.A_log = nnx.Param(_a_log_init(rngs.params(), (h,), jnp.float32),
                               logical_axes=("q_heads",), weight_decay=False)
        self.dt_bias = nnx.Param(_dt_bias_init(rngs.params(), (h, hd), jnp.float32),
                                 logical_axes=heads, weight_decay=False)
        self.wbeta = layers.Dense(d, h, in_axes=("embed",), out_axes=("q_heads",), **kw)
        # Output: low-rank sigmoid gate times the per-head RMS-normalised output.
        self.wg_down = layers.Dense(d, hd, in_axes=("embed",), out_axes=("kda_rank",), **kw)
        self.wg_up = layers.Dense(hd, (h, hd), in_axes=("kda_rank",), out_axes=heads, **kw)
        self.o_norm = layers.RMSNorm(hd, eps=cfg.norm_eps, rngs=rngs)
        self.wo = layers.Dense((h, hd), d, in_axes=heads, out_axes=("embed",),
                               init_scale=(2 * cfg.n_layers) ** -0.5, **kw)

    def log_decay(self, x_BTD):
        """``g [B, T, H, K]`` float32, ``<= 0``."""
        f = self.wf_up(self.wf_down(x_BTD)).astype(jnp.float32)
        a = jnp.exp(self.A_log[...])[:, None]                           # [H, 1]
        return -a * jax.nn.softplus(f + self.dt_bias[...])

    def inputs(self, x_BTD):
        """The op's inputs ``q, k, v, g, beta`` (q, k already L2-normalised)."""
        spec = ("batch", "seq", "q_heads", "head_dim")
        q = l2_normalize(jax.nn.silu(self.conv_q(self.wq(x_BTD))))
        k = l2_normalize(jax.nn.silu(self.conv_k(self.wk(x_BTD))))
        v = jax.nn.silu(self.conv_v(self.wv(x_BTD)))
        beta = jax.nn.sigmoid(self.wbeta(x_BTD).astype(jnp.float32))
        return (constrain(q, spec), constrain(k, spec), constrain(v, spec),
                self.log_decay(x_BTD), beta)

    def __call__(self, x_BTD, positions_BT=None):
        del positions_BT  # causal by construction; no rotary
        q, k, v, g, beta = self.inputs(x_BTD)
        o, _ = kda(q, k, v, g, beta, chunk_size=self.chunk_size,
                   implementation=self.implementation)
        o = constrain(o, ("batch", "seq", "q_heads", "head_dim"))
        gate = jax.nn.sigmoid(self.wg_up(self.wg_down(x_BTD)).astype(jnp.float32))
        y = (gate * self.o_norm(o).astype(jnp.float32)).astype(o.dtype)
        return self.wo(y)

    # --- incremental decoding -------------------------------------------------
    # The cache is the recurrent state ``[B, H, K, V]`` (float32) plus the last
    # ``conv_size - 1`` pre-convolution inputs of q, k and v: constant in T.

    def init_cache(self, batch: int, max_len: int) -> dict:
        del max_len
        h, hd = self.n_heads, self.head_dim
        window = jnp.zeros((batch, self.conv_q.size - 1, h, hd), self.wq.dtype)
        return {"conv_q": window, "conv_k": window, "conv_v": window,
                "state": jnp.zeros((batch, h, hd, hd), jnp.float32)}

    def step(self, x_BSD, positions_BS, cache: dict, start):
        del positions_BS, start
        q, cq = self.conv_q.step(self.wq(x_BSD), cache["conv_q"])
        k, ck = self.conv_k.step(self.wk(x_BSD), cache["conv_k"])
        v, cv = self.conv_v.step(self.wv(x_BSD), cache["conv_v"])
        q = l2_normalize(jax.nn.silu(q))
        k = l2_normalize(jax.nn.silu(k))
        v = jax.nn.silu(v)
        beta = jax.nn.sigmoid(self.wbeta(x_BSD).astype(jnp.float32))
        # A prompt goes through the layer's own implementation; single tokens
        # through the token recurrence (the chunked form has nothing to batch).
        impl = self.implementation if x_BSD.shape[1] > 1 else "reference"
        o, state = kda(q, k, v, self.log_decay(x_BSD), beta, chunk_size=self.chunk_size,
                       implementation=impl, initial_state=cache["state"],
                       output_final_state=True)
        gate = jax.nn.sigmoid(self.wg_up(self.wg_down(x_BSD)).astype(jnp.float32))
        y = (gate * self.o_norm(o).astype(jnp.float32)).astype(o.dtype)
        return self.wo(y), {"conv_q": cq, "conv_k": ck, "conv_v": cv, "state": state}
