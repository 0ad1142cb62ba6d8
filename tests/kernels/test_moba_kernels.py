"""MoBA fast paths (xla, Pallas TPU and GPU kernels) against the dense reference.

Every sparse implementation is checked in outputs and in dq, dk, dv: on CPU the
Pallas kernels run in interpret mode, and each kernel is also lowered for its
real platform (``tpu`` Mosaic, ``cuda`` Triton) so that a kernel that cannot be
compiled for its target fails here.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.lowering import KERNEL_CALL_TARGETS, lower_for
from kernels.moba import BlockSizes, blocked, moba_attention, ops
from kernels.moba import cost as ops_cost

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}
SPARSE = ["xla", "blocked", "pallas_tpu", "pallas_gpu"]
# Small tiles so that one tile spans several blocks and a block several tiles.
SMALL_TILES = BlockSizes(block_rows=16, block_k=16)


def _inputs(seed, b, t, hq, hkv, d, dtype):
    kq, kk, kv, kg = jax.random.split(jax.random.key(seed), 4)
    return tuple(jax.random.normal(key, shape, jnp.float32).astype(dtype) for key, shape in
                 ((kq, (b, t, hq, d)), (kk, (b, t, hkv, d)), (kv, (b, t, hkv, d)),
                  (kg, (b, t, hq, d))))


@functools.partial(jax.jit, static_argnames=("block_size", "top_k", "implementation",
                                             "block_sizes"))
def _out_and_grads(q, k, v, dout, *, block_size, top_k, implementation, block_sizes=None):
    def f(q, k, v):
        return moba_attention(q, k, v, block_size=block_size, top_k=top_k,
                              implementation=implementation, block_sizes=block_sizes)
    out, vjp = jax.vjp(f, q, k, v)
    return (out, *vjp(dout))


def _rel_err(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return np.max(np.abs(actual - expected)) / np.max(np.abs(expected))


# (B, T, Hq, Hkv, D, block_size, top_k)
CASES = {
    "gqa4_multiple": (2, 96, 8, 2, 32, 16, 3),
    "mqa_partial_block": (1, 100, 4, 1, 16, 32, 2),
    "current_block_only": (1, 70, 2, 2, 64, 16, 1),
    "topk_exceeds_blocks": (1, 50, 4, 4, 16, 16, 8),
    "shorter_than_block": (1, 12, 2, 1, 16, 16, 2),
    "longer": (1, 300, 8, 4, 32, 32, 3),
    "head_dim128": (1, 80, 4, 2, 128, 32, 3),
}


@functools.lru_cache(maxsize=None)
def _expected(case, dtype):
    b, t, hq, hkv, d, bs, top_k = CASES[case]
    args = _inputs(7, b, t, hq, hkv, d, dtype)
    return args, _out_and_grads(*args, block_size=bs, top_k=top_k, implementation="reference")


# Every case in float32; bfloat16 on the two GQA/MQA cases (bf16 adds rounding, not paths).
DTYPE_CASES = ([(c, jnp.float32) for c in CASES] +
               [(c, jnp.bfloat16) for c in ("gqa4_multiple", "mqa_partial_block")])


# Marked slow (each path keeps a representative in CI):
# - bfloat16 on mqa_partial_block, every implementation: bfloat16 on gqa4_multiple runs
#   the same dtype handling in CI, mqa_partial_block in float32 the same geometry;
# - "longer" on xla and blocked: test_default_tiling_matches_reference[xla|blocked] runs
#   the same case, and test_blocked_chunked_steps_match_reference the blocked path on it
#   with 16-row tiles.
# - head_dim128 on xla and blocked (head-dim agnostic jnp code, covered by every other
#   case); it stays in CI for the two Pallas kernels, whose tiles depend on head_dim.
SLOW_SPARSE = ({(i, "mqa_partial_block", jnp.bfloat16) for i in SPARSE}
               | {("xla", "longer", jnp.float32), ("blocked", "longer", jnp.float32)}
               | {(i, "head_dim128", jnp.float32) for i in ("xla", "blocked")})
SPARSE_CASES = [pytest.param(i, c, d, id=f"{i}-{c}-{jnp.dtype(d).name}",
                             marks=pytest.mark.slow if (i, c, d) in SLOW_SPARSE else ())
                for i in SPARSE for c, d in DTYPE_CASES]


@pytest.mark.parametrize("implementation,case,dtype", SPARSE_CASES)
def test_sparse_matches_reference(implementation, case, dtype):
    _, _, _, _, _, bs, top_k = CASES[case]
    args, want = _expected(case, dtype)
    got = _out_and_grads(*args, block_size=bs, top_k=top_k, implementation=implementation,
                         block_sizes=SMALL_TILES)
    for name, g, w in zip(("out", "dq", "dk", "dv"), got, want):
        assert g.dtype == dtype and g.shape == w.shape, name
        err = _rel_err(g, w)
        assert err < TOL[dtype], f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("implementation", ["xla", "blocked", "pallas"])
def test_default_tiling_matches_reference(implementation):
    # Default BlockSizes (128-row tiles: one tile holds several blocks' rows).
    args, want = _expected("longer", jnp.float32)
    got = _out_and_grads(*args, block_size=32, top_k=3, implementation=implementation)
    for g, w in zip(got, want):
        assert _rel_err(g, w) < 1e-5


@pytest.mark.parametrize("implementation", SPARSE)
def test_short_sequences_are_full_causal_attention(implementation):
    # T <= top_k * block_size: every past block is selected.
    q, k, v, _ = _inputs(3, 1, 80, 4, 2, 16, jnp.float32)
    got = jax.jit(functools.partial(moba_attention, block_size=16, top_k=5,
                                    implementation=implementation,
                                    block_sizes=SMALL_TILES))(q, k, v)
    with jax.default_matmul_precision("highest"):  # no TF32 on GPU
        want = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    assert _rel_err(got, want) < 1e-5


def _largest_intermediate(jaxpr) -> int:
    biggest = 0
    for eqn in jaxpr.eqns:
        for var in eqn.outvars:
            biggest = max(biggest, int(np.prod(getattr(var.aval, "shape", ()))))
        for param in eqn.params.values():
            for sub in (param if isinstance(param, (tuple, list)) else (param,)):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    biggest = max(biggest, _largest_intermediate(inner))
    return biggest


@pytest.mark.parametrize("implementation", ["xla", "blocked"])
def test_xla_path_never_materialises_seq_by_seq(implementation):
    t, bs = 16384, 128
    spec = jax.ShapeDtypeStruct((1, t, 1, 64), jnp.float32)
    grad = jax.grad(lambda q, k, v: moba_attention(q, k, v, block_size=bs, top_k=3,
                                                   implementation=implementation).sum(),
                    argnums=(0, 1, 2))
    biggest = _largest_intermediate(jax.make_jaxpr(grad)(spec, spec, spec).jaxpr)
    assert biggest < t * t // 16, f"an intermediate has {biggest} elements (T^2 = {t * t})"


# --- the blocked path's plan, chunks and cost ---------------------------------------

def test_blocked_plan_places_every_pair_once():
    b, t, hq, hkv, bs, top_k, rows = 2, 200, 4, 2, 16, 4, 8
    q, k, _, _ = _inputs(5, b, t, hq, hkv, 8, jnp.float32)
    from kernels.moba import selection
    past = np.asarray(selection.select_slots(q, k, block_size=bs, top_k=top_k))[..., 1:]
    m = blocked.num_past_tiles(t, hq // hkv, bs, top_k, rows)
    plan = jax.tree.map(np.asarray, blocked.make_plan(jnp.asarray(past), hkv, bs, rows, m))
    r, s = hq // hkv, top_k - 1
    pairs = past.reshape(b, t, hkv, r, s).transpose(0, 2, 1, 3, 4).reshape(b * hkv, -1)
    for bg in range(b * hkv):
        pos = plan.pair_pos_BGP[bg]
        valid = pairs[bg] >= 0
        assert np.all((pos >= 0) == valid)
        assert valid.sum() == r * blocked.valid_past_pairs(t, bs, top_k)
        assert len(set(pos[valid])) == valid.sum()                  # one row per pair
        rows_of = np.arange(pairs.shape[1]) // s
        np.testing.assert_array_equal(plan.pos_row_BGX[bg][pos[valid]], rows_of[valid])
        tile_of = pos[valid] // rows                                # in its block's tile
        np.testing.assert_array_equal(plan.tile_block_BGM[bg][tile_of], pairs[bg][valid])
        assert np.all(np.diff(plan.tile_block_BGM[bg]) >= 0)
        assert np.sum(plan.pos_row_BGX[bg] >= 0) == valid.sum()     # the rest is empty


def test_blocked_chunked_steps_match_reference(monkeypatch):
    # A small chunk bound: the 10 current blocks take 4 lax.scan steps of 3 and the 72
    # past tiles 5 steps of 15, both last steps padded.
    monkeypatch.setattr(blocked, "_CHUNK_SCORE_ELEMENTS", 7680)
    assert blocked._chunking(10, 2 * 32 * 32) == (4, 3)
    assert blocked.past_layout(300, 2, 32, 3, 16) == (5, 15)
    args, want = _expected("longer", jnp.float32)
    # Tiles of 16 rows, and a BlockSizes of its own so that jit traces afresh.
    got = _out_and_grads(*args, block_size=32, top_k=3, implementation="blocked",
                         block_sizes=BlockSizes(block_rows=16, block_k=32))
    for g, w in zip(got, want):
        assert _rel_err(g, w) < 1e-5


def test_blocked_scored_pairs_golden():
    # The replication's MoBA (T=1024, block 64, top-3, 2 query heads on 1 key head):
    # 16 causal tiles [2 * 64, 64] and 73 past tiles of 64 rows per sequence, i.e.
    # ceil((2 * 1856 valid pairs + 15 * 63) / 64) = 73.
    assert blocked.num_past_tiles(1024, 2, 64, 3, 64) == 73
    pairs = blocked.scored_pairs_per_token(1024, 2, 1, 64, 3)
    assert pairs == (16 * 128 * 64 + 73 * 64 * 64) / 1024 == 420.0
    # Between MoBA's exact pairs and the xla path's work items.
    t = np.arange(1024)
    exact = 2 * np.mean(t % 64 + 1 + np.minimum(2, t // 64) * 64)
    assert exact < pairs < ops_cost.scored_pairs_per_token(1024, 2, 1, 32, 64, 3)


# --- cross-platform lowering ---------------------------------------------------------

LOWERING = [("pallas_tpu", "tpu", 2), ("pallas_gpu", "cuda", 3)]  # kernels in fwd + bwd


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("variant,platform,num_kernels", LOWERING)
def test_kernels_lower_for_their_platform(variant, platform, num_kernels, dtype, head_dim):
    shapes = [(2, 1000, 8, head_dim), (2, 1000, 2, head_dim), (2, 1000, 2, head_dim)]
    args = [jax.ShapeDtypeStruct(s, dtype) for s in shapes]

    def fwd(q, k, v):  # the op's internals, bypassing the "no such backend here" check
        return ops._moba_sparse(q, k, v, 256, 3, 0.125, variant, BlockSizes(), False)

    def fwd_bwd(q, k, v):
        return jax.grad(lambda *a: fwd(*a).astype(jnp.float32).sum(), argnums=(0, 1, 2))(
            q, k, v)

    target = KERNEL_CALL_TARGETS[platform]
    assert lower_for(fwd, args, platform).count(target) == 1
    assert lower_for(fwd_bwd, args, platform).count(target) == num_kernels


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_blocked_path_lowers_for_accelerators(platform):
    # Plain jnp (sort, gathers, a scatter-add, batched products): forward and backward
    # lower for TPU and GPU as they do for CPU.
    args = [jax.ShapeDtypeStruct(s, jnp.bfloat16)
            for s in [(2, 1000, 8, 128), (2, 1000, 2, 128), (2, 1000, 2, 128)]]
    loss = lambda q, k, v: moba_attention(q, k, v, block_size=256, top_k=3,
                                          implementation="blocked").astype(jnp.float32).sum()
    assert "sort" in lower_for(jax.grad(loss, argnums=(0, 1, 2)), args, platform)


def test_lowering_reports_kernel_errors():
    # A GPU kernel with a head_dim Triton cannot tile is rejected, with the fix named.
    args = [jax.ShapeDtypeStruct((1, 64, 1, 24), jnp.float32)] * 3
    with pytest.raises(ValueError, match="head_dim=24 must be a power of two"):
        lower_for(lambda q, k, v: ops._moba_sparse(q, k, v, 16, 2, 0.2, "pallas_gpu",
                                                   BlockSizes(), False), args, "cuda")
