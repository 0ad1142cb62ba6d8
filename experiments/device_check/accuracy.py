"""The accuracy checks, at small shapes (each compiles in seconds), after the timings.

``ours``: on the device, every kernel the timings used against its reference, output and
every input gradient of ``sum(out * w)`` for a fixed random ``w``:

* MoBA (``cfg.moba``'s tiling) against ``moba_reference`` (dense masked softmax): max
  relative error, bars of ``tests/kernels/test_moba_kernels.py`` (1e-5 float32, 2e-2
  bfloat16);
* each KDA implementation timed against the float32 token recurrence, with strong decays
  (``g`` down to -5), beta of 0 and 1 at some tokens and a length that is not a multiple
  of the chunk: relative RMS error, kda.md's bars in bfloat16 (0.005 output, 0.008
  dq/dk/dv, 0.02 dg/dbeta) and 1e-4 in float32;
* cuDNN dense attention against the ``xla`` one (bfloat16, max relative error 2e-2).

float32 cases run under ``jax.default_matmul_precision("highest")`` (no TF32).
The anchors' jobs (``anchors.check``) compare FLA's and jax-linear-attention's KDA with
our ``xla`` path on the inputs ``ours`` cached.
"""
from __future__ import annotations

from experiments.device_check import anchors, inputs, plan, records

MOBA_TOL = {"float32": 1e-5, "bfloat16": 2e-2}
KDA_TOL = {"float32": dict(out=1e-4, dq=1e-4, dk=1e-4, dv=1e-4, dg=1e-4, dbeta=1e-4),
           "bfloat16": dict(out=5e-3, dq=8e-3, dk=8e-3, dv=8e-3, dg=2e-2, dbeta=2e-2)}


def _rel_max(a, b) -> float:
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-30))


def _rel_rms(a, b) -> float:
    import numpy as np
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2)) / max(float(np.sqrt(np.mean(b ** 2))), 1e-30))


def out_and_grads(f, args, seed: int = 7):
    """``(out, grads of sum(out * w) w.r.t. every arg)`` as float32 NumPy arrays."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    out = jax.jit(f)(*args)
    w = jax.random.normal(jax.random.key(seed), out.shape, jnp.float32)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32) * w),
                             argnums=tuple(range(len(args)))))(*args)
    return [np.asarray(x, np.float32) for x in (out, *grads)]


def _kda_case(shape, dtype):
    """KDA inputs with the hard cases: strong decays, beta of exactly 0 and 1."""
    import jax

    from kernels.kda import l2_normalize

    b, t, h, d = shape
    ks = jax.random.split(jax.random.key(3), 5)
    q = l2_normalize(jax.random.normal(ks[0], (b, t, h, d))).astype(dtype)
    k = l2_normalize(jax.random.normal(ks[1], (b, t, h, d))).astype(dtype)
    v = jax.random.normal(ks[2], (b, t, h, d)).astype(dtype)
    g = -5.0 * jax.nn.sigmoid(2.0 * jax.random.normal(ks[3], (b, t, h, d)))   # (-5, 0)
    beta = jax.nn.sigmoid(jax.random.normal(ks[4], (b, t, h)))
    beta = beta.at[:, ::7].set(0.0).at[:, 3::11].set(1.0)
    return q, k, v, g, beta


def _check(out, base, got, want, names, tol, metric):
    for n, a, b in zip(names, got, want):
        err = metric(a, b)
        bar = tol[n] if isinstance(tol, dict) else tol
        records.append(out, dict(base, tensor=n, error=err, tolerance=bar, ok=bool(err <= bar),
                                 metric=metric.__name__.strip("_")))


def ours(cfg, out: str, log=print) -> None:
    import contextlib

    import jax
    import jax.numpy as jnp

    from kernels.kda import kda
    from kernels.moba import BlockSizes, moba_attention

    a = cfg.accuracy
    impls = plan.items(cfg, "attention")
    dense = "dense_cudnn" if "dense_cudnn" in impls else "dense_xla"
    moba_impls = [i for i in impls if i.startswith("moba_")]
    kda_impls = [i[len("kda_"):] for i in impls if i.startswith("kda_")]
    for dtype in a.dtypes:
        prec = (jax.default_matmul_precision("highest") if dtype == "float32"
                else contextlib.nullcontext())
        dt = jnp.dtype(dtype)
        cases = []
        b, t, h, d = a.moba_shape
        qkv = [jax.random.normal(jax.random.key(i), (b, t, h, d)).astype(dt) for i in range(3)]
        moba = lambda impl: (lambda q, k, v: moba_attention(
            q, k, v, block_size=a.moba_block_size, top_k=a.moba_top_k, implementation=impl,
            block_sizes=BlockSizes(**cfg.moba.block_sizes)))
        for impl in moba_impls:
            cases.append((impl, "moba_reference", moba(impl[len("moba_"):]), moba("reference"),
                          qkv, ("out", "dq", "dk", "dv"), MOBA_TOL[dtype], _rel_max, a.moba_shape))
        kargs = _kda_case(a.kda_shape, dt)
        kfn = lambda impl: (lambda q, k, v, g, beta: kda(q, k, v, g, beta,
                                                          implementation=impl)[0])
        for impl in kda_impls:
            cases.append((f"kda_{impl}", "kda_reference", kfn(impl), kfn("reference"), kargs,
                          ("out", "dq", "dk", "dv", "dg", "dbeta"), KDA_TOL[dtype], _rel_rms,
                          a.kda_shape))
        if dtype == "bfloat16" or dense == "dense_xla":
            b, t, h, d = a.dense_shape
            dqkv = [x[:, :t, :h, :d] for x in qkv]
            attn = lambda impl: (lambda q, k, v: jax.nn.dot_product_attention(
                q, k, v, is_causal=True, implementation=impl))
            cases.append((dense, "dense_xla", attn(dense[len("dense_"):]), attn("xla"), dqkv,
                          ("out", "dq", "dk", "dv"), MOBA_TOL[dtype], _rel_max, a.dense_shape))
        done = {}       # (name, float32 inputs?) -> outputs: each function runs once

        def run(name, f, args, f32):
            if (name, f32) not in done:
                done[name, f32] = out_and_grads(
                    f, [x.astype(jnp.float32) for x in args] if f32 else args)
            return done[name, f32]

        for impl, against, f, f_ref, args, names, tol, metric, shape in cases:
            base = dict(section="accuracy", kind="check", impl=impl, against=against,
                        dtype=dtype, shape=list(shape))
            try:
                with prec:
                    f32 = against.endswith("reference")     # references run in float32
                    got = run(impl, f, args, dtype == "float32")
                    want = run(against, f_ref, args, f32 or dtype == "float32")
                _check(out, base, got, want, names, tol, metric)
                log(f"[accuracy] {impl} vs {against} {dtype}: done")
            except Exception as e:  # recorded; the next case runs
                records.append(out, dict(base, kind="error", error=records.short_error(e)))
                log(f"[accuracy] {impl} vs {against} {dtype}: FAILED {records.short_error(e)}")
    # the anchors' jobs compare against our xla path on these cached inputs
    inputs.prepare(cfg.cache_dir, *a.kda_shape)


def run_item(name: str, cfg, out: str, deadline: float, log=print) -> None:
    """``ours`` or one anchor's check against our xla path."""
    del deadline
    if name == "ours":
        return ours(cfg, out, log)
    base = dict(section="accuracy", impl=name, against="kda_xla",
                shape=list(cfg.accuracy.kda_shape), dtype="bfloat16")
    reason = anchors.unavailable(name)
    if reason:
        records.append(out, dict(base, kind="skipped", reason=reason))
        log(f"[accuracy] {name}: skipped ({reason})")
        return
    arrays = inputs.load(cfg.cache_dir, *cfg.accuracy.kda_shape)
    errs = anchors.check(name, arrays)          # an error is recorded by job.py
    for n, err in errs.items():
        records.append(out, dict(base, kind="check", tensor=n, error=err, metric="rel_max"))
    log(f"[accuracy] {name} vs kda_xla: " + ", ".join(f"{n}={e:.2e}" for n, e in errs.items()))
