"""The "compiled" FLOP count agrees with XLA's cost analysis for every arm of the
scaling sweep, for the forward pass and for the whole training step.

The models are the sweep's own (``configs/scaling.py`` planned by
:func:`moba_jax.sweep.plan.plan_sweep`, sizes s1 and s4), at T = 256 and 512, batch 1.
The training step is the real one (:func:`moba_jax.train.step.train_step`: the loss,
its gradient and the AdamW update of ``configs/lm.py``), compared with
:func:`moba_jax.accounting.train_step_flops` (tokens x the per-token training count,
plus the optimizer's per-step update). Compile only, nothing runs.

Loops. XLA's cost analysis counts a loop body once, whatever its trip count, while our
count is what runs. Here that concerns the KDA layers' scans over chunks (the forward's,
and in training also the backward's reverse scan): the unseen trips are added back to
XLA's number from our own formula (``kda.kda_uncounted_by_xla``, as in
``tests/test_flops.py``), so what is checked is everything outside the loops, one body
of each loop, and the per-token bookkeeping. MoBA's work items fit one scan step at
these sizes (asserted below, for the ``xla`` and ``blocked`` paths), so XLA sees all
of them. A conditional counts as its largest branch (KDA's leaf-size switch: the usual
branch is the largest).
"""
import functools

import jax
import jax.numpy as jnp
import pytest

from configs import lm, scaling
from kernels.moba import BlockSizes, blocked
from kernels.moba.dispatch import Geometry
from kernels.moba.xla import items_per_step
from moba_jax import accounting
from moba_jax.attention import kda
from moba_jax.model import layer_kinds
from moba_jax.sweep.plan import plan_sweep
from moba_jax.train import optim
from moba_jax.train.state import model_spec
from moba_jax.train.step import train_step

SIZES = {"s1": 1e11, "s4": 1.6e12}       # the sweep's sizes and budgets at either end
SEQ_LENS = (256, 512)
BATCH = 1
# The cost analysis is taken on the optimised HLO; the backend's LLVM optimisation
# level does not change it (checked: equal counts) and level 0 halves compile times.
COMPILE_OPTIONS = {"xla_backend_optimization_level": 0}


def sweep_models() -> dict[tuple[str, str], object]:
    """``{(arm, size): model config}`` of the scaling sweep's runs at :data:`SIZES`."""
    cfg = scaling.get_config()
    cfg.sizes = ",".join(SIZES)
    cfg.budgets = ",".join(str(b) for b in SIZES.values())
    return {(p.arm, p.size): p.config.model for p in plan_sweep(cfg)}


MODELS = sweep_models()


def xla_flops(fn, *args) -> float:
    cost = jax.jit(fn).lower(*args).compile(COMPILE_OPTIONS).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"])


def xla_forward_and_train_step(model_cfg, batch: int, seq_len: int) -> tuple[float, float]:
    spec = model_spec(model_cfg)
    tokens = jax.ShapeDtypeStruct((batch, seq_len), jnp.int32)
    forward = xla_flops(spec.apply, spec.param_shapes, tokens)
    train_cfg = lm.train_config()
    if "optimizer" in train_cfg:
        train_cfg.optimizer = "adamw"      # what accounting.optimizer_flops_per_step counts
    tx, schedule = optim.make_optimizer(train_cfg, 100, spec.param_shapes, spec.metadata)
    state = {"params": spec.param_shapes, "opt_state": jax.eval_shape(tx.init, spec.param_shapes),
             "step": jax.ShapeDtypeStruct((), jnp.int32)}
    batch_ = {"inputs": tokens, "targets": tokens, "positions": tokens,
              "loss_mask": jax.ShapeDtypeStruct((batch, seq_len), jnp.float32)}
    step = functools.partial(train_step, spec=spec, tx=tx, schedule=schedule, grad_accum=1)
    return forward, xla_flops(step, state, batch_)


def moba_scan_steps(model_cfg, seq_len: int) -> int:
    """Loop steps over the MoBA path's tiles (XLA counts one): the ``xla`` path's work
    items, the ``blocked`` path's past tiles; the reference has no loop."""
    o = model_cfg.attention.moba
    bs, k, hq, hkv = int(o.block_size), int(o.top_k), model_cfg.n_heads, model_cfg.n_kv_heads
    if o.implementation == "blocked":
        return max(1, blocked.past_layout(seq_len, hq // hkv, bs, k, blocked.DEFAULT_TILE_ROWS)[0])
    if o.implementation != "xla":
        return 1
    geo = Geometry(1, seq_len, hq, hkv, model_cfg.head_dim, bs, k, BlockSizes().block_rows)
    return -(-geo.num_items // items_per_step(geo, hkv))


# Compiling these programs takes ~4 s (full, MLA), ~9 s (MoBA) and 16 to 50 s (Kimi
# Linear: three KDA layers with their chunk algebra, forward and backward) on a 2-core
# CPU, so the default run checks every arm once and each size and length at least once;
# the other points are marked slow (``pytest -m slow tests/test_flops_train.py``). MoBA
# runs in CI at s4/512 (its work items fit one scan step there too); s1/256 is slow.
FAST = {("full", "s1", 256), ("mla", "s4", 512), ("moba", "s4", 512),
        ("kimi_linear", "s1", 256)}
CASES = [pytest.param(arm, size, t, marks=() if (arm, size, t) in FAST else pytest.mark.slow)
         for arm, size in sorted(MODELS) for t in SEQ_LENS]


@pytest.mark.parametrize("arm,size,seq_len", CASES)
def test_compiled_count_matches_xla_forward_and_train_step(arm, size, seq_len):
    cfg = MODELS[(arm, size)]
    kinds = layer_kinds(cfg)
    if "moba" in kinds:
        assert moba_scan_steps(cfg, seq_len) == 1
    tokens = BATCH * seq_len
    unseen_fwd = sum(kda.kda_uncounted_by_xla(cfg, seq_len) for k in kinds if k == "kda")
    unseen_train = sum(kda.kda_uncounted_by_xla(cfg, seq_len, train=True)
                       for k in kinds if k == "kda")
    xla_fwd, xla_train = xla_forward_and_train_step(cfg, BATCH, seq_len)
    xla_fwd += unseen_fwd * tokens
    xla_train += unseen_train * tokens
    ours_fwd = accounting.forward_flops_per_token(cfg, seq_len, "compiled")["total"] * tokens
    ours_train = accounting.train_step_flops(cfg, seq_len, BATCH)
    assert abs(ours_fwd - xla_fwd) / xla_fwd < 0.05, \
        f"forward: ours {ours_fwd:.4g} vs XLA {xla_fwd:.4g}"
    assert abs(ours_train - xla_train) / xla_train < 0.05, \
        f"train step: ours {ours_train:.4g} vs XLA {xla_train:.4g}"


def test_training_counts_by_convention():
    """"exact" trains at 3 x forward for every arm (scaling.md), and so does "compiled"
    for a kind without its own training count (the user-defined ``swa`` of
    ``tests/custom_kinds``: the registry's default)."""
    import tests.custom_kinds.sliding_window  # noqa: F401  (registers "swa")
    from moba_jax.attention import get_attention
    for cfg in MODELS.values():
        fwd = accounting.forward_flops_per_token(cfg, 256, "exact")["total"]
        assert accounting.train_flops_per_token(cfg, 256, "exact") == pytest.approx(3 * fwd)
    swa = get_attention("swa")
    cfg = MODELS[("full", "s1")].copy_and_resolve_references()
    cfg.attention.swa = swa.default_options()
    for convention in ("exact", "compiled"):
        assert swa.train_flops_per_token(cfg, 256, convention) == \
            3 * swa.flops_per_token(cfg, 256, convention)
