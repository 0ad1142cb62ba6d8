"""The "compiled program" FLOP count agrees with XLA's cost analysis."""
import jax
import jax.numpy as jnp
import pytest

from moba_jax import accounting, elementwise, units
from moba_jax.attention import kda
from moba_jax.attention.full import qkvo_elementwise, qkvo_flops
from moba_jax.model import default_model_config, layer_kinds
from moba_jax.train.state import init_params, model_spec

SIZES = {
    "xs": dict(d_model=64, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=32, mlp_dim=192),
    "s": dict(d_model=128, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=384),
    "m": dict(d_model=256, n_layers=2, n_heads=8, n_kv_heads=4, head_dim=32, mlp_dim=768),
}


def xla_forward_flops(cfg, batch, seq_len):
    spec = model_spec(cfg)
    params = init_params(cfg, 0)
    # LLVM optimisation level 0 roughly halves compile times and leaves the cost analysis
    # (taken on the optimised HLO) unchanged, as in tests/test_flops_train.py.
    compiled = jax.jit(spec.apply).lower(params, jnp.zeros((batch, seq_len), jnp.int32)).compile(
        {"xla_backend_optimization_level": 0})
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


@pytest.mark.parametrize("size", sorted(SIZES))
@pytest.mark.parametrize("seq_len", [128, 512])
def test_compiled_count_matches_xla(size, seq_len):
    cfg = default_model_config()
    cfg.update(SIZES[size])
    batch = 2
    ours = accounting.forward_flops_per_token(cfg, seq_len, "compiled")["total"] * batch * seq_len
    xla = xla_forward_flops(cfg, batch, seq_len)
    assert abs(ours - xla) / xla < 0.05, f"ours {ours:.4g} vs XLA {xla:.4g}"


def test_conventions_and_units():
    cfg = default_model_config()
    T = 256
    fwd_exact = accounting.forward_flops_per_token(cfg, T, "exact")
    fwd_comp = accounting.forward_flops_per_token(cfg, T, "compiled")
    # Causal attention needs (T+1)/2 keys per query on average; dense computes T, and
    # in "compiled" also the softmax over them and the rotary embedding.
    attn_core = lambda f: f["attention"] - cfg.n_layers * qkvo_flops(cfg)
    per_key = cfg.n_layers * 4.0 * cfg.head_dim * cfg.n_heads
    assert attn_core(fwd_exact) == pytest.approx(per_key * (T + 1) / 2)
    softmax = elementwise.softmax_attention("xla", cfg.n_heads * T)[0]
    around = qkvo_elementwise(cfg, rope=True)[0]
    assert attn_core(fwd_comp) == pytest.approx(per_key * T + cfg.n_layers * (softmax + around))
    assert accounting.train_flops_per_token(cfg, T, "exact") == pytest.approx(3 * fwd_exact["total"])
    assert accounting.train_flops_per_token(cfg, T, "6nd") == 6 * accounting.non_embedding_params(cfg)
    assert units.to_pflops_days(8.64e19) == pytest.approx(1.0)


# --- KDA, MLA and the Kimi Linear hybrid -------------------------------------------
#
# How the KDA "compiled" count is compared with XLA. The chunked KDA path
# (kernels/kda) runs a lax.scan over the T / C chunks, and XLA's cost
# analysis counts a loop body once, not once per trip. Our "compiled" count is what
# the program really computes: every scan step. So the test adds back to XLA's number
# exactly the unseen trips, from our own formula (kda.kda_uncounted_by_xla). What
# this checks: everything outside the loop (including the usual branch of the
# leaf-size switch, which XLA counts as its largest branch), one loop body, and the
# per-token bookkeeping (chunks, padding, heads). What it cannot check against XLA:
# the trip-count multiplier, which is arithmetic on terms that are checked. Sizes keep
# at least two chunks: with a single chunk the zero initial state lets XLA fold part
# of the body away.

def kimi_cfg(size, pattern, n_layers=None, rope=False):
    cfg = default_model_config()
    cfg.update(SIZES[size])
    cfg.attention_pattern = pattern
    if n_layers:
        cfg.n_layers = n_layers
    cfg.attention.mla.update(kv_latent_dim=48, rope_dim=16, rope=rope)
    return cfg


@pytest.mark.parametrize("size,pattern,n_layers,seq_len", [
    ("s", "kda", None, 128),
    ("xs", "kda", None, 512),
    ("s", "mla", None, 128),
    ("m", "mla", None, 512),
    ("s", "kda,kda,kda,mla", 4, 256),
])
def test_kda_mla_compiled_count_matches_xla(size, pattern, n_layers, seq_len):
    cfg = kimi_cfg(size, pattern, n_layers, rope=pattern == "mla")
    batch = 2
    ours = accounting.forward_flops_per_token(cfg, seq_len, "compiled")["total"] * batch * seq_len
    unseen = sum(kda.kda_uncounted_by_xla(cfg, seq_len)
                 for k in layer_kinds(cfg) if k == "kda") * batch * seq_len
    xla = xla_forward_flops(cfg, batch, seq_len) + unseen
    assert abs(ours - xla) / xla < 0.05, f"ours {ours:.4g} vs XLA (+ loop trips) {xla:.4g}"


@pytest.mark.parametrize("pattern", ["kda", "mla", "kda,kda,kda,mla"])
@pytest.mark.parametrize("q_latent_dim", [0, 24])
def test_kda_mla_param_counts_match_model(pattern, q_latent_dim):
    from moba_jax.model import param_counts
    cfg = kimi_cfg("s", pattern, n_layers=4)
    cfg.attention.mla.q_latent_dim = q_latent_dim
    counts = param_counts(model_spec(cfg).param_shapes)
    assert counts["non_embedding"] == accounting.non_embedding_params(cfg)
    assert accounting.train_flops_per_token(cfg, 256, "6nd") == 6 * counts["non_embedding"]


def test_kda_exact_count_is_the_design_formula():
    cfg = kimi_cfg("m", "kda")
    d, C, T = cfg.head_dim, cfg.attention.kda.chunk_size, 1024
    attn = accounting.forward_flops_per_token(cfg, T, "exact")["attention"]
    core = attn - cfg.n_layers * kda.kda_projection_flops(cfg)
    # kda.md: about 6 T d^2 + 3 T C d + T C^2 per head and sequence.
    assert core == pytest.approx(cfg.n_layers * cfg.n_heads * (6 * d * d + 3 * C * d + C * C))
    # Linear in T: the per-token cost does not grow with the context, attention's does.
    assert accounting.forward_flops_per_token(cfg, 4 * T, "exact")["attention"] == pytest.approx(attn)
    mla = kimi_cfg("m", "mla")
    grow = lambda c: (accounting.forward_flops_per_token(c, 4 * T, "exact")["attention"]
                      / accounting.forward_flops_per_token(c, T, "exact")["attention"])
    assert grow(mla) > 2.0


@pytest.mark.parametrize("impl", ["xla", "reference"])
@pytest.mark.parametrize("seq_len,last_full", [(256, 0), (512, 0), (256, 1)])
def test_moba_compiled_count_matches_xla(impl, seq_len, last_full):
    """MoBA (and the layer-wise MoBA/full hybrid): our "compiled" count vs XLA.

    At these sizes the xla path's work items fit one scan chunk, so XLA's
    count-the-loop-body-once rule sees all of it."""
    cfg = default_model_config()
    cfg.update(SIZES["s"])
    cfg.update(attention_pattern="moba", full_attention_last_n=last_full)
    cfg.attention.moba.update(block_size=64, top_k=3, implementation=impl)
    batch = 1
    ours = accounting.forward_flops_per_token(cfg, seq_len, "compiled")["total"] * batch * seq_len
    xla = xla_forward_flops(cfg, batch, seq_len)
    assert abs(ours - xla) / xla < 0.05, f"ours {ours:.4g} vs XLA {xla:.4g}"
