"""Timing and GPU sanity checks for the KDA op.

``run`` times forward+backward (``jax.grad`` of a scalar loss w.r.t. q, k, v, g, beta;
median of a few calls after a compile/warm-up call) for each implementation and for
dense causal softmax attention on the same shapes, e.g. on this CPU machine::

    python3 -c "from kernels.kda import benchmark as b; b.print_rows(b.run([1024, 2048, 4096, 8192]))"

``gpu_check`` is meant for a GPU host (jax 0.11 + CUDA)::

    python3 -c "from kernels.kda import benchmark as b; b.gpu_check()"

It compares the Pallas GPU kernels (forward and gradients) with the chunked XLA path at a
few sizes and prints max relative errors, then times fwd+bwd against T for the XLA path,
the Pallas kernels and dense attention. Each implementation/size runs inside its own
``try`` so one failure (e.g. out of memory) is reported and the rest continues.
"""
from __future__ import annotations

import statistics
import time
import traceback

import jax
import jax.numpy as jnp
import numpy as np

from kernels.kda import kda, l2_normalize


def make_inputs(seq_len, *, batch=1, heads=4, head_dim=128, dtype="float32", seed=0):
    """Realistic KDA inputs: L2-normalised q, k; g in about [-0.5, 0]; beta = sigmoid."""
    dt = jnp.dtype(dtype)
    ks = jax.random.split(jax.random.key(seed), 5)
    shape = (batch, seq_len, heads, head_dim)
    q = l2_normalize(jax.random.normal(ks[0], shape)).astype(dt)
    k = l2_normalize(jax.random.normal(ks[1], shape)).astype(dt)
    v = jax.random.normal(ks[2], shape).astype(dt)
    g = -0.5 * jax.nn.sigmoid(jax.random.normal(ks[3], shape) - 2.0)
    beta = jax.nn.sigmoid(jax.random.normal(ks[4], shape[:3]))
    return q, k, v, g, beta


def _loss_fn(impl, interpret=False):
    def loss(q, k, v, g, beta):
        if impl == "dense":
            o = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        else:
            o, _ = kda(q, k, v, g, beta, implementation=impl, interpret=interpret)
        return jnp.sum(o.astype(jnp.float32))
    return loss


def time_fwd_bwd(impl, args, *, reps=3, interpret=False):
    """Median seconds of one jitted fwd+bwd call (after one warm-up call)."""
    fn = jax.jit(jax.grad(_loss_fn(impl, interpret), argnums=(0, 1, 2, 3, 4)))
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def pallas_supported() -> bool:
    return jax.default_backend() in ("gpu", "tpu")


def run(seq_lens, *, batch=1, heads=4, head_dim=128, dtype="float32",
        implementations=("reference", "xla"), include_dense_attention=True, reps=3):
    """Times fwd+bwd per implementation and T; returns ``[{impl, T, fwd_bwd_s}, ...]``.

    ``"pallas"`` is skipped (with a printed note) where the backend has no Pallas compiler
    (CPU); a failing measurement is reported as ``fwd_bwd_s=None`` with ``error``.
    """
    impls = list(implementations) + (["dense"] if include_dense_attention else [])
    rows = []
    for T in seq_lens:
        args = make_inputs(T, batch=batch, heads=heads, head_dim=head_dim, dtype=dtype)
        for impl in impls:
            if impl == "pallas" and not pallas_supported():
                print(f"[kda benchmark] skip pallas on backend {jax.default_backend()} (no compiler)")
                continue
            row = dict(impl=impl, T=int(T), fwd_bwd_s=None)
            try:
                row["fwd_bwd_s"] = time_fwd_bwd(impl, args, reps=reps)
            except Exception as e:  # noqa: BLE001 - benchmark keeps going, reports the error.
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
    return rows


def print_rows(rows):
    for r in rows:
        t = "failed: " + r["error"] if r["fwd_bwd_s"] is None else f"{r['fwd_bwd_s'] * 1e3:10.1f} ms"
        print(f"{r['impl']:>10} T={r['T']:>6}  {t}")


def _rel(a, b):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


def gpu_check(sizes=((1, 256, 2, 64, "float32"), (2, 1000, 4, 64, "float32"),
                     (1, 4096, 8, 64, "bfloat16")),
              seq_lens=(4096, 8192, 16384, 32768, 65536), heads=16, head_dim=64,
              dtype="bfloat16"):
    """Pallas GPU kernels vs the XLA path (errors), then fwd+bwd timings vs T.

    The Triton variant supports head dims up to 64 (see ``pallas.py``), hence the default
    ``head_dim=64``; with a larger head dim the pallas rows report the tile error and the
    other implementations are still timed.
    """
    print("backend:", jax.default_backend(), jax.devices())
    for B, T, H, D, dt in sizes:
        try:
            q, k, v, g, beta = make_inputs(T, batch=B, heads=H, head_dim=D, dtype=dt, seed=1)
            s0 = 0.1 * jax.random.normal(jax.random.key(2), (B, H, D, D), jnp.float32)
            w = jax.random.normal(jax.random.key(3), v.shape, jnp.float32)

            def loss(impl):
                def f(q, k, v, g, beta, s0):
                    o, s = kda(q, k, v, g, beta, initial_state=s0, output_final_state=True,
                               implementation=impl)
                    return jnp.sum(o.astype(jnp.float32) * w) + jnp.sum(s), (o, s)
                return jax.jit(jax.grad(f, argnums=range(6), has_aux=True))

            (gx, (ox, sx)) = loss("xla")(q, k, v, g, beta, s0)
            (gp, (op, sp)) = loss("pallas")(q, k, v, g, beta, s0)
            errs = {"o": _rel(op, ox), "state": _rel(sp, sx)}
            errs.update({f"d{n}": _rel(a, b) for n, a, b in zip(
                ("q", "k", "v", "g", "beta", "s0"), gp, gx)})
            print(f"[check] B={B} T={T} H={H} D={D} {dt}: max rel err pallas vs xla: "
                  + ", ".join(f"{n}={e:.2e}" for n, e in errs.items()))
        except Exception:  # noqa: BLE001
            print(f"[check] B={B} T={T} H={H} D={D} {dt}: FAILED")
            traceback.print_exc()
    for T in seq_lens:
        args = make_inputs(T, batch=1, heads=heads, head_dim=head_dim, dtype=dtype)
        for impl in ("xla", "pallas", "dense"):
            try:
                s = time_fwd_bwd(impl, args)
                print(f"[time] {impl:>6} T={T:>6} H={heads} D={head_dim} {dtype}: {s * 1e3:9.2f} ms")
            except Exception as e:  # noqa: BLE001
                print(f"[time] {impl:>6} T={T:>6}: FAILED {type(e).__name__}: {str(e)[:300]}")
