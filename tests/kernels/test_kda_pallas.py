"""KDA Pallas kernels: interpret-mode numerics vs the reference (both variants), and
cross-platform lowering of every forward/backward kernel for TPU (Mosaic) and CUDA
(Triton) on this CPU-only machine."""
from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import pytest
from jax import export

from kernels.kda import kda
from kernels.kda import pallas as kda_pallas_mod
from kernels.kda.pallas import kda_pallas
from kernels.lowering import target_context
from tests.kernels.kda_helpers import assert_close, make_inputs, rel_rms, value_and_grads

KERNELS = {"tpu": ("kda_intra_fwd", "kda_state_fwd_tpu", "kda_state_bwd_tpu", "kda_intra_bwd"),
           "gpu": ("kda_intra_fwd", "kda_state_fwd_gpu", "kda_state_bwd_gpu", "kda_intra_bwd")}


def _pallas(variant, chunk_size=64, interpret=True, block_sizes=None):
  def fn(q, k, v, g, beta, s0):
    return kda_pallas(q, k, v, g, beta, scale=q.shape[-1] ** -0.5, initial_state=s0,
                      chunk_size=chunk_size, interpret=interpret, variant=variant,
                      block_sizes=block_sizes)
  return fn


def _reference(args, weights):
  def fn(q, k, v, g, beta, s0):
    return kda(q, k, v, g, beta, initial_state=s0, output_final_state=True,
               implementation="reference")
  return value_and_grads(fn, tuple(a.astype(jnp.float32) for a in args), weights)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("variant", ["tpu", "gpu"])
def test_pallas_matches_reference(variant, dtype):
  args, weights = make_inputs(B=1, T=100, H=2, K=32, V=16, dtype=dtype, seed=1)
  got = value_and_grads(_pallas(variant), args, weights)
  assert got["o"].dtype == jnp.dtype(dtype) and got["dk"].dtype == jnp.dtype(dtype)
  assert_close(got, _reference(args, weights), dtype)


# The GPU kernels at the head dims models use: with the default tiles (block_k = block_v =
# 16) K = V = 128 runs 8 key tiles in the intra-chunk loops and 8 V-tile programs in the
# state pass, whose V-reduced gradients are summed from 8 partials; 64 runs 4 of each.
# Two chunks of 64 so the state is carried. The bf16 case is `slow` to keep CI short:
# [128-128-float32] runs the same kernels and tiles, and bf16 numerics are checked at
# small head dims by test_pallas_matches_reference.
@pytest.mark.parametrize("K,V,dtype", [
    (64, 64, "float32"), (128, 128, "float32"),
    pytest.param(128, 128, "bfloat16", marks=pytest.mark.slow)])
def test_gpu_head_dims_match_reference(K, V, dtype):
  args, weights = make_inputs(B=1, T=128, H=1, K=K, V=V, dtype=dtype, seed=2)
  got = value_and_grads(_pallas("gpu"), args, weights)
  assert got["o"].dtype == jnp.dtype(dtype)
  assert_close(got, _reference(args, weights), dtype)


# The second case is `slow`: the first covers the same code (several key and V tiles,
# K != V) with other tile counts.
@pytest.mark.parametrize("K,V,block_sizes", [
    (128, 64, kda_pallas_mod.BlockSizes(block_k=64, block_v=32)),
    pytest.param(64, 128, kda_pallas_mod.BlockSizes(block_k=32, block_v=64),
                 marks=pytest.mark.slow)])
def test_gpu_other_tiles_match_reference(K, V, block_sizes):
  """Tiles other than the defaults (and K != V) change speed only, never results."""
  args, weights = make_inputs(B=1, T=100, H=1, K=K, V=V, seed=3)
  got = value_and_grads(_pallas("gpu", block_sizes=block_sizes), args, weights)
  assert_close(got, _reference(args, weights), "float32")


@pytest.mark.parametrize("variant,g_min,g_max,chunk", [
    ("tpu", -10.0, -2.0, 64), ("gpu", -1e-6, 0.0, 32)], ids=["strong-tpu", "near0-gpu"])
def test_pallas_extreme_decays(variant, g_min, g_max, chunk):
  args, weights = make_inputs(B=1, T=96, H=1, K=16, V=32, g_min=g_min, g_max=g_max, seed=4)
  got = value_and_grads(_pallas(variant, chunk), args, weights)
  assert_close(got, _reference(args, weights), "float32")


def test_pallas_state_carry_and_public_op():
  """Two halves with the state carried == one run; public op (interpret=None on CPU)."""
  args, _ = make_inputs(B=2, T=130, H=1, K=16, V=16, seed=5)
  q, k, v, g, beta, s0 = args
  run = lambda *a: kda(*a[:5], initial_state=a[5], output_final_state=True,
                       implementation="pallas")
  o_full, s_full = run(*args)
  cut = 64
  o1, s1 = run(q[:, :cut], k[:, :cut], v[:, :cut], g[:, :cut], beta[:, :cut], s0)
  o2, s2 = run(q[:, cut:], k[:, cut:], v[:, cut:], g[:, cut:], beta[:, cut:], s1)
  assert rel_rms(jnp.concatenate([o1, o2], axis=1), o_full) < 1e-5
  assert rel_rms(s2, s_full) < 1e-5


def test_interpret_auto_on_cpu_logs_once(caplog, monkeypatch):
  monkeypatch.setattr(kda_pallas_mod, "_logged_interpret", False)
  with caplog.at_level(logging.INFO, logger="kernels.kda.pallas"):
    assert kda_pallas_mod.resolve_interpret(None) is True
    assert kda_pallas_mod.resolve_interpret(None) is True
  assert [r.getMessage() for r in caplog.records].count(
      "kda(implementation='pallas'): CPU backend, running kernels with interpret=True.") == 1
  assert kda_pallas_mod.resolve_interpret(False) is False


@pytest.mark.parametrize("variant,K,V,chunk,match", [
    ("tpu", 48, 16, 64, "K \\(q/k head dim\\)=48 is too large or not supported"),
    ("tpu", 512, 16, 64, "K \\(q/k head dim\\)=512 .* \\[16, 256\\]"),
    ("gpu", 16, 512, 64, "V \\(v head dim\\)=512 .* gpu kernel tiles .* \\[16, 256\\]"),
    ("gpu", 96, 16, 64, "K \\(q/k head dim\\)=96 .* gpu kernel tiles"),
    ("tpu", 16, 16, 48, "chunk_size=48 must be a power of two"),
])
def test_tile_errors(variant, K, V, chunk, match):
  args, _ = make_inputs(B=1, T=8, H=1, K=K, V=V)
  with pytest.raises(ValueError, match=match):
    _pallas(variant, chunk)(*args)


# ----------------------------------------------------------------------------- lowering
def _lower(variant, platform, dtype, K=64, V=64):
  B, T, H = 2, 192, 2
  sds = jax.ShapeDtypeStruct
  args = (sds((B, T, H, K), dtype), sds((B, T, H, K), dtype), sds((B, T, H, V), dtype),
          sds((B, T, H, K), jnp.float32), sds((B, T, H), jnp.float32),
          sds((B, H, K, V), jnp.float32))

  def fwd_bwd(*a):
    def loss(*a):
      o, s = _pallas(variant, interpret=False)(*a)
      return jnp.sum(o.astype(jnp.float32)) + jnp.sum(s)
    return jax.value_and_grad(loss, argnums=tuple(range(6)))(*a)

  with target_context(platform):  # an abstract GPU to lower for (jax 0.11 asks for one)
    exported = export.export(
        jax.jit(fwd_bwd), platforms=[platform],
        disabled_checks=[export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(*args)
    return exported.mlir_module()


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("variant,platform,K,V", [
    ("tpu", "tpu", 64, 128), ("tpu", "tpu", 128, 128), ("gpu", "cuda", 64, 64),
    ("gpu", "cuda", 128, 128)])
def test_kernels_lower_for_platform(variant, platform, K, V, dtype):
  text = _lower(variant, platform, dtype, K=K, V=V)
  target = "tpu_custom_call" if platform == "tpu" else "__gpu$xla.gpu.triton"
  assert target in text
  missing = [name for name in KERNELS[variant] if name not in text]
  assert not missing, f"kernels not lowered for {platform}: {missing}"
