"""KDA alone, without a config: forward+backward timings per implementation and a check
of the Pallas GPU kernels against the xla path (the attention benchmark with configs is
``kernels/bench.py``)::

    python -c "from kernels import bench_kda as b; b.kda_print_rows(b.kda_run([1024, 2048, 4096]))"
    python -c "from kernels import bench_kda as b; b.kda_gpu_check()"      # on a GPU host
"""
from __future__ import annotations

import traceback

import jax
import jax.numpy as jnp
import numpy as np

from kernels.bench import median_time
from kernels.kda import kda, l2_normalize


def kda_inputs(seq_len, *, batch=1, heads=4, head_dim=128, dtype="float32", seed=0):
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


def _kda_loss(impl):
    def loss(q, k, v, g, beta):
        if impl == "dense":
            o = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        else:
            o, _ = kda(q, k, v, g, beta, implementation=impl)
        return jnp.sum(o.astype(jnp.float32))
    return loss


def kda_time_fwd_bwd(impl, args, *, reps=3) -> float:
    """Median seconds of one jitted fwd+bwd call (``jax.grad`` w.r.t. q, k, v, g, beta)
    of ``kda(implementation=impl)`` or, for ``impl="dense"``, causal attention."""
    fn = jax.jit(jax.grad(_kda_loss(impl), argnums=(0, 1, 2, 3, 4)))
    return median_time(fn, args, reps)[0]


def kda_run(seq_lens, *, batch=1, heads=4, head_dim=128, dtype="float32",
            implementations=("reference", "xla"), include_dense_attention=True, reps=3):
    """Times fwd+bwd per implementation and T; returns ``[{impl, T, fwd_bwd_s}, ...]``.

    ``"pallas"`` is skipped (with a printed note) where the backend has no Pallas compiler
    (CPU); a failing measurement is reported as ``fwd_bwd_s=None`` with ``error``.
    """
    impls = list(implementations) + (["dense"] if include_dense_attention else [])
    rows = []
    for T in seq_lens:
        args = kda_inputs(T, batch=batch, heads=heads, head_dim=head_dim, dtype=dtype)
        for impl in impls:
            if impl == "pallas" and jax.default_backend() not in ("gpu", "tpu"):
                print(f"[kda benchmark] skip pallas on backend {jax.default_backend()} "
                      "(no compiler)")
                continue
            row = dict(impl=impl, T=int(T), fwd_bwd_s=None)
            try:
                row["fwd_bwd_s"] = kda_time_fwd_bwd(impl, args, reps=reps)
            except Exception as e:  # noqa: BLE001 - benchmark keeps going, reports the error.
                row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
            rows.append(row)
    return rows


def kda_print_rows(rows):
    for r in rows:
        t = ("failed: " + r["error"] if r["fwd_bwd_s"] is None
             else f"{r['fwd_bwd_s'] * 1e3:10.1f} ms")
        print(f"{r['impl']:>10} T={r['T']:>6}  {t}")


def _max_rel(a, b):
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))


def kda_gpu_check(sizes=((1, 256, 2, 64, "float32"), (1, 1000, 4, 128, "float32"),
                         (1, 4096, 8, 128, "bfloat16")),
                  seq_lens=(4096, 8192, 16384, 32768, 65536), heads=16, head_dim=128,
                  dtype="bfloat16", block_sizes=None):
    """On a GPU host: the Pallas GPU kernels vs the XLA path (max relative errors of the
    outputs and all gradients), then fwd+bwd timings vs T for xla, pallas and dense.

    Each implementation/size runs inside its own ``try``, so one failure (e.g. out of
    memory) is reported and the rest continues. The Triton kernels take head dims that
    are powers of two in [16, 256] (``kernels/kda/pallas_gpu.py``); the defaults check 64
    and 128 and time 128. ``block_sizes``: a ``kernels.kda.BlockSizes`` for the checks
    (default tiles when ``None``), to try other tiles.
    """
    print("backend:", jax.default_backend(), jax.devices())
    for B, T, H, D, dt in sizes:
        try:
            q, k, v, g, beta = kda_inputs(T, batch=B, heads=H, head_dim=D, dtype=dt, seed=1)
            s0 = 0.1 * jax.random.normal(jax.random.key(2), (B, H, D, D), jnp.float32)
            w = jax.random.normal(jax.random.key(3), v.shape, jnp.float32)

            def loss(impl):
                def f(q, k, v, g, beta, s0):
                    o, s = kda(q, k, v, g, beta, initial_state=s0, output_final_state=True,
                               implementation=impl,
                               block_sizes=block_sizes if impl == "pallas" else None)
                    return jnp.sum(o.astype(jnp.float32) * w) + jnp.sum(s), (o, s)
                return jax.jit(jax.grad(f, argnums=range(6), has_aux=True))

            (gx, (ox, sx)) = loss("xla")(q, k, v, g, beta, s0)
            (gp, (op, sp)) = loss("pallas")(q, k, v, g, beta, s0)
            errs = {"o": _max_rel(op, ox), "state": _max_rel(sp, sx)}
            errs.update({f"d{n}": _max_rel(a, b) for n, a, b in zip(
                ("q", "k", "v", "g", "beta", "s0"), gp, gx)})
            print(f"[check] B={B} T={T} H={H} D={D} {dt}: max rel err pallas vs xla: "
                  + ", ".join(f"{n}={e:.2e}" for n, e in errs.items()))
        except Exception:  # noqa: BLE001
            print(f"[check] B={B} T={T} H={H} D={D} {dt}: FAILED")
            traceback.print_exc()
    kda_print_rows(kda_run(seq_lens, heads=heads, head_dim=head_dim, dtype=dtype,
                           implementations=("xla", "pallas")))
