"""KDA reference and chunked-XLA path: math, stability, state carry, padding, bad input."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.kda import kda, kda_chunked
from tests.kernels.kda_helpers import (GRAD_NAMES, assert_close, make_inputs, numpy_kda,
                                       rel_rms, value_and_grads)


def _impl(name, **kw):
  def fn(q, k, v, g, beta, s0):
    return kda(q, k, v, g, beta, initial_state=s0, output_final_state=True,
               implementation=name, **kw)
  return fn


def _reference_f32(args, weights):
  """Reference on float32 copies of the (possibly bf16) inputs."""
  f32 = tuple(a.astype(jnp.float32) for a in args)
  return value_and_grads(_impl("reference"), f32, weights)


@pytest.mark.parametrize("T,g_min", [(37, -3.0), (50, -10.0)])
def test_reference_matches_numpy_matrix_form(T, g_min):
  args, _ = make_inputs(B=2, T=T, H=2, K=8, V=4, g_min=g_min)
  scale = 8 ** -0.5
  o_np, s_np = numpy_kda(*args, scale)
  o, s = _impl("reference")(*args)
  assert o.dtype == jnp.float32 and s.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(o), o_np, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(s), s_np, rtol=1e-5, atol=1e-5)


def test_default_scale_and_no_state():
  args, _ = make_inputs(B=1, T=20, H=1, K=16, V=8)
  q, k, v, g, beta, _ = args
  o_np, _ = numpy_kda(q, k, v, g, beta, np.zeros((1, 1, 16, 8)), 0.25)
  o, s = kda(q, k, v, g, beta, implementation="reference")
  assert s is None
  np.testing.assert_allclose(np.asarray(o), o_np, rtol=1e-5, atol=1e-5)
  o2, _ = kda(q, k, v, g, beta, scale=0.5, implementation="reference")
  np.testing.assert_allclose(np.asarray(o2), 2 * o_np, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("T,K,V,chunk,dtype", [
    (100, 32, 16, 64, "float32"),
    # slow (~7 s): bf16 rounding on the padded shape; CI covers bf16 with
    # [64-16-32-32-bfloat16] and the padded shape with [100-32-16-64-float32].
    pytest.param(100, 32, 16, 64, "bfloat16", marks=pytest.mark.slow),
    (64, 16, 32, 32, "float32"), (64, 16, 32, 32, "bfloat16")])
def test_xla_matches_reference(dtype, T, K, V, chunk):
  args, weights = make_inputs(B=2, T=T, H=2, K=K, V=V, dtype=dtype)
  got = value_and_grads(_impl("xla", chunk_size=chunk), args, weights)
  assert got["o"].dtype == jnp.dtype(dtype) and got["state"].dtype == jnp.float32
  assert got["dq"].dtype == jnp.dtype(dtype) and got["ds0"].dtype == jnp.float32
  assert_close(got, _reference_f32(args, weights), dtype)


@pytest.mark.parametrize("g_min,g_max", [(-10.0, -2.0), (-1e-6, 0.0)], ids=["strong", "near0"])
def test_xla_extreme_decays(g_min, g_max):
  args, weights = make_inputs(B=1, T=80, H=2, K=16, V=16, g_min=g_min, g_max=g_max, seed=3)
  got = value_and_grads(_impl("xla"), args, weights)
  assert_close(got, _reference_f32(args, weights), "float32")


def test_decayed_scores_no_overflow_with_strong_decay():
  """A chunk with cumulative decay ~-640 would overflow exp(-G); scores stay exact."""
  from kernels.kda.chunked_decay import decayed_scores
  rng = np.random.default_rng(0)
  C, K = 64, 8
  x = rng.standard_normal((C, K))
  y = rng.standard_normal((C, K))
  G = np.cumsum(rng.uniform(-10, -9, (C, K)), axis=0)
  got = np.asarray(decayed_scores(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                                  jnp.asarray(G, jnp.float32), inclusive=True))
  want = np.einsum("id,jd,ijd->ij", x, y, np.exp(G[:, None, :] - G[None, :, :]))
  want = np.tril(want)
  assert np.all(np.isfinite(got))
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("T,g_min,g_max,leaf", [(128, -0.1, 0.0, 64), (128, -2.0, -1.0, 16),
                                                 (80, -10.0, -2.0, 1)],
                         ids=["whole-chunk", "leaf16", "exact"])
def test_xla_every_leaf_branch_matches_reference(T, g_min, g_max, leaf):
  """The xla path picks its leaf block from the decays (chunked.leaf_index): mild decays
  take one factorised product per chunk, moderate ones 16-blocks, strong ones the exact
  recursion. Each branch must equal the recurrence (outputs, state, all gradients)."""
  from kernels.kda import chunked_decay as chunked
  args, weights = make_inputs(B=1, T=T, H=2, K=16, V=16, g_min=g_min, g_max=g_max, seed=5)
  g = jnp.pad(jnp.asarray(args[3], jnp.float32), [(0, 0), (0, -T % 64), (0, 0), (0, 0)])
  g = g.reshape(1, -1, 64, 2, 16)
  G = jnp.moveaxis(jnp.cumsum(g, axis=2), 3, 2)  # [B, N, H, C, K]
  sizes = chunked.leaf_sizes(64)
  assert sizes[int(chunked.leaf_index(G))] == leaf
  got = value_and_grads(_impl("xla"), args, weights)
  assert_close(got, _reference_f32(args, weights), "float32")


def test_segment_counts():
  """Long inputs run in segments of whole chunks (a divisor of the chunk count, at most
  chunked.MAX_SEGMENTS, about chunked.SEGMENT_BYTES each)."""
  from kernels.kda.chunked import MAX_SEGMENTS, SEGMENT_BYTES, num_segments
  assert num_segments(64, 8 * SEGMENT_BYTES) == 8  # T=4K, 4 heads of 128
  assert num_segments(256, 32 * SEGMENT_BYTES) == MAX_SEGMENTS
  assert num_segments(6, 6 * SEGMENT_BYTES) == 6
  assert num_segments(7, 3 * SEGMENT_BYTES) == 1  # wants 3; 7 has no divisor 2 or 3
  assert num_segments(4, SEGMENT_BYTES // 2) == 1


def test_xla_segments_match_reference(monkeypatch):
  """Forcing one segment per chunk (tiny SEGMENT_BYTES) must change nothing: outputs,
  state and all gradients (initial state included) still equal the recurrence."""
  from kernels.kda import chunked
  monkeypatch.setattr(chunked, "SEGMENT_BYTES", 1)
  calls = []
  core = chunked._chunked_core
  monkeypatch.setattr(chunked, "_chunked_core", lambda *a: calls.append(1) or core(*a))
  args, weights = make_inputs(B=2, T=60, H=2, K=16, V=8, seed=7)  # 4 chunks of 16
  got = value_and_grads(_impl("xla", chunk_size=16), args, weights)
  assert len(calls) == 4
  assert_close(got, _reference_f32(args, weights), "float32")


@pytest.mark.parametrize("leaf", [1, 16, 64])
def test_decayed_scores_every_leaf_equals_direct_sum(leaf):
  from kernels.kda.chunked_decay import decayed_scores
  rng = np.random.default_rng(1)
  C, K = 64, 8
  x, y = rng.standard_normal((2, C, K))
  G = np.cumsum(rng.uniform(-0.6, 0.0, (C, K)), axis=0)  # chunk span <= 38.4 < 40
  want = np.tril(np.einsum("id,jd,ijd->ij", x, y, np.exp(G[:, None, :] - G[None, :, :])))
  got = decayed_scores(*(jnp.asarray(a, jnp.float32) for a in (x, y, G)), inclusive=True,
                       leaf=leaf)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["reference", "xla"])
def test_state_carry_equals_one_run(impl):
  args, _ = make_inputs(B=1, T=150, H=2, K=16, V=16)
  q, k, v, g, beta, s0 = args
  run = jax.jit(_impl(impl))
  o_full, s_full = run(*args)
  cut = 75   # both halves one shape: one compilation for them
  o1, s1 = run(q[:, :cut], k[:, :cut], v[:, :cut], g[:, :cut], beta[:, :cut], s0)
  o2, s2 = run(q[:, cut:], k[:, cut:], v[:, cut:], g[:, cut:], beta[:, cut:], s1)
  assert rel_rms(jnp.concatenate([o1, o2], axis=1), o_full) < 1e-5
  assert rel_rms(s2, s_full) < 1e-5


def test_padding_tokens_change_nothing():
  """Tokens with g=0, beta=0, q=k=v=0 (what the chunked path pads with) are no-ops."""
  args, _ = make_inputs(B=1, T=50, H=2, K=16, V=16)
  o, s = kda_chunked(*args[:5], scale=0.25, initial_state_BHKV=args[5], chunk_size=64)
  padded = [jnp.pad(a, [(0, 0), (0, 78)] + [(0, 0)] * (a.ndim - 2)) for a in args[:5]]
  o_p, s_p = kda_chunked(*padded, scale=0.25, initial_state_BHKV=args[5], chunk_size=64)
  np.testing.assert_array_equal(np.asarray(o_p[:, 50:]), 0.0)
  assert rel_rms(o_p[:, :50], o) < 1e-6 and rel_rms(s_p, s) < 1e-6


def test_xla_under_jit_and_grad_finite():
  args, weights = make_inputs(B=1, T=64, H=1, K=16, V=16)
  out = jax.jit(lambda *a: value_and_grads(_impl("xla"), a, weights))(*args)
  for n in ("o", "state") + GRAD_NAMES:
    assert np.all(np.isfinite(np.asarray(out[n], np.float32))), n


# ----------------------------------------------------------------------------- bad input
def _good():
  args, _ = make_inputs(B=1, T=16, H=2, K=16, V=16)
  return dict(zip(("q", "k", "v", "g", "beta", "initial_state"), args))


@pytest.mark.parametrize("change,match", [
    (lambda a: a.update(g=a["g"].at[0, 0, 0, 0].set(0.5)), "g must be <= 0"),
    (lambda a: a.update(g=a["g"].at[0, 3, 1, 2].set(jnp.nan)), "g contains non-finite"),
    (lambda a: a.update(g=a["g"].at[0, 3, 1, 2].set(-jnp.inf)), "g contains non-finite"),
    (lambda a: a.update(beta=a["beta"].at[0, 0, 0].set(1.001)), r"beta must lie in \[0, 1\]"),
    (lambda a: a.update(beta=a["beta"].at[0, 0, 0].set(-0.5)), r"beta must lie in \[0, 1\]"),
    (lambda a: a.update(beta=a["beta"].at[0, 1, 1].set(jnp.nan)), "beta contains non-finite"),
    (lambda a: a.update(k=a["k"][:, :8]), "k shape"),
    (lambda a: a.update(g=a["g"][..., :8]), "g shape"),
    (lambda a: a.update(v=a["v"][:, :8]), "v shape"),
    (lambda a: a.update(beta=a["beta"][..., None]), "beta must have 3 dimensions"),
    (lambda a: a.update(q=a["q"][0]), "q must have 4 dimensions"),
    (lambda a: a.update(k=a["k"].astype(jnp.bfloat16)), "share one dtype"),
    (lambda a: a.update(v=a["v"].astype(jnp.int32)), "v has dtype int32"),
    (lambda a: a.update(initial_state=a["initial_state"].astype(jnp.bfloat16)),
     "initial_state has dtype bfloat16"),
    (lambda a: a.update(initial_state=a["initial_state"][:, :1]), "initial_state shape"),
])
def test_bad_input_messages(change, match):
  a = _good()
  change(a)
  with pytest.raises(ValueError, match=match):
    kda(**a, implementation="xla")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_saturated_beta_accepted_eagerly(dtype):
  """beta exactly 0 or 1 is valid (sigmoid saturates to 1.0 in float32 and bfloat16):
  the eager call accepts it and agrees with the jitted call, which never checked it."""
  a = {n: x.astype(dtype) if n != "initial_state" else x for n, x in _good().items()}
  assert jax.nn.sigmoid(jnp.asarray(20.0, dtype)) == 1.0  # what real models feed in
  a["beta"] = a["beta"].at[0, :4].set(1.0).at[0, 4:8].set(0.0)
  o, s = kda(**a, output_final_state=True)
  o_jit, s_jit = jax.jit(lambda **kw: kda(**kw, output_final_state=True))(**a)
  assert np.all(np.isfinite(np.asarray(o, np.float32)))
  assert rel_rms(o, o_jit) < 1e-5 and rel_rms(s, s_jit) < 1e-5


def test_bad_implementation_and_chunk():
  a = _good()
  with pytest.raises(ValueError, match="unknown implementation='cuda'"):
    kda(**a, implementation="cuda")
  with pytest.raises(ValueError, match="chunk_size=40 must be a power of two >= 16"):
    kda(**a, chunk_size=40)


def test_value_checks_skipped_under_jit():
  """Documented: under tracing the values are unknown, so g/beta range checks are skipped."""
  a = _good()
  a["g"] = jnp.abs(a["g"])  # invalid (positive) but only detectable with concrete values
  with pytest.raises(ValueError, match="g must be <= 0"):
    kda(**a)
  o, _ = jax.jit(lambda **kw: kda(**kw))(**a)
  assert o.shape == a["v"].shape
