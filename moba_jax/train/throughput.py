"""Training throughput of a run config: tokens per second and MFU of its train step.

The same jitted step the trainer runs (:func:`moba_jax.train.step.jit_train_step`, set up
by the trainer's :func:`moba_jax.train.step.setup`),
on synthetic batches of the run's shape (throughput does not depend on the token
values), compiled ahead of time (``compile_s``: tracing, lowering and XLA compilation,
no step run), then timed step by step with a device sync after each, after ``warmup``
untimed steps. MFU is compiled FLOPs per second (the convention that
counts what the program computes, ``moba_jax/accounting.py``) over the peak of
:func:`moba_jax.train.metrics.peak_flops_per_device` times the device count; on a
CPU that peak is a float32 matmul measured in the same process.
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import jax
import jax.numpy as jnp

from moba_jax import accounting
from moba_jax import sharding as shd
from moba_jax.train import metrics as mx
from moba_jax.train import state as st
from moba_jax.train import step as stp


@dataclasses.dataclass
class Throughput:
    step_ms: float              # median of the timed steps
    tokens_per_s: float
    compiled_flops_per_s: float
    mfu: float | None
    peak_flops_per_device: float | None
    peak_source: str
    compile_s: float            # trace + lower + compile, ahead of time (no step run)
    n_params_nonembed: int
    tokens_per_step: int

    def row(self) -> dict:
        return dataclasses.asdict(self)


def synthetic_batch(global_batch: int, seq_len: int, sharding) -> dict:
    """A batch of the trainer's layout: zeros for tokens, every position a loss token."""
    shape = (global_batch, seq_len)
    batch = {"inputs": jnp.zeros(shape, jnp.int32), "targets": jnp.zeros(shape, jnp.int32),
             "loss_mask": jnp.ones(shape, jnp.float32),
             "positions": jnp.broadcast_to(jnp.arange(seq_len, dtype=jnp.int32), shape)}
    return jax.device_put(batch, sharding)


def measure(config, *, steps: int = 10, warmup: int = 2) -> Throughput:
    """Times ``steps`` train steps of ``config`` (a run config: model, train, mesh)."""
    t = config.train
    s = stp.setup(config, max(steps + warmup, 2))
    peak, source = mx.peak_flops_per_device(t.get("peak_flops_per_device", 0.0))
    with shd.activation_sharding(s.mesh, s.rules):
        state = st.create_state(config.model, s.tx, t.seed, s.state_sharding)
        fn = stp.jit_train_step(s.spec, s.tx, s.schedule, t.grad_accum, s.state_sharding,
                                s.batch_sharding)
        batch = synthetic_batch(t.global_batch, t.seq_len, s.batch_sharding)
        t0 = time.perf_counter()
        fn = fn.lower(state, batch).compile()
        compile_s = time.perf_counter() - t0
        for _ in range(warmup):
            state, m = fn(state, batch)
            jax.block_until_ready(m)
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            state, m = fn(state, batch)
            jax.block_until_ready(m)
            times.append(time.perf_counter() - t0)
    step_s = statistics.median(times)
    tokens = t.global_batch * t.seq_len
    tps = tokens / step_s
    flops = tps * accounting.train_flops_per_token(config.model, t.seq_len, "compiled")
    return Throughput(step_s * 1e3, tps, flops,
                      flops / (peak * jax.device_count()) if peak else None, peak, source,
                      compile_s, accounting.non_embedding_params(config.model), tokens)


def format_table(rows: list[tuple[str, Throughput]]) -> str:
    head = (f"{'run':<34}{'N non-emb':>11}{'step ms':>10}{'tokens/s':>11}"
            f"{'GFLOP/s':>10}{'MFU':>8}")
    lines = [head, "-" * len(head)]
    for name, r in rows:
        mfu = f"{100 * r.mfu:.1f}%" if r.mfu is not None else "-"
        lines.append(f"{name:<34}{r.n_params_nonembed:>11,}{r.step_ms:>10.1f}"
                     f"{r.tokens_per_s:>11,.0f}{r.compiled_flops_per_s / 1e9:>10.1f}{mfu:>8}")
    return "\n".join(lines)
