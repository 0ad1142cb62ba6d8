"""Section (a): attention forward and forward+backward, one job per implementation.

Every implementation runs on the same cached inputs (``inputs.py``) at every length of
``cfg.seq_lens``, under the one timing rule of ``records.time_call``; each point is
appended to ``device_check.json`` as soon as it is measured. Names:

* ``dense_<impl>``: ``jax.nn.dot_product_attention(is_causal=True, implementation=impl)``
  (``cudnn`` on a GPU, ``xla`` anywhere);
* ``moba_<impl>``: ``kernels.moba.moba_attention`` (block size, top-k and tiling from
  ``cfg.moba``);
* ``kda_<impl>``: ``kernels.kda.kda`` on ``q, k, v, g, beta``;
* the anchors of ``anchors.ANCHORS`` (FLA's ``chunk_kda``, jax-linear-attention's KDA).

``fwd_bwd`` is the gradient of ``sum(out)`` (float32) with respect to every input (q, k,
v; and g, beta for KDA), forward included. At each length ``fwd_bwd`` runs before
``fwd``: it is the figure the targets are stated in. A point is skipped, with a record
saying so, when the job's deadline is nearer than the previous point took.

FLOPs are the ones the computation needs (multiply-adds x 2; backward = 2 x forward):
``kernels.bench``'s dense causal, MoBA and KDA counts.
"""
from __future__ import annotations

import time

from experiments.device_check import anchors, inputs, records

MODES = ("fwd_bwd", "fwd")


def needed_flops(impl: str, mode: str, cfg, seq_len: int) -> float:
    from kernels import bench

    h, d, b = cfg.heads, cfg.head_dim, cfg.batch
    if impl.startswith("dense_"):
        f = bench.dense_causal_flops(seq_len, d, h, b)
    elif impl.startswith("moba_"):
        f = bench.moba_flops(seq_len, d, cfg.moba.block_size, cfg.moba.top_k, h, b)
    else:                                  # KDA, ours or an anchor's
        f = bench.kda_flops(seq_len, d, h, b)
    return f * (3.0 if mode == "fwd_bwd" else 1.0)


def jax_fn(impl: str, cfg):
    """``(f(*args) -> out, input names)`` of one of our implementations."""
    import jax

    if impl.startswith("dense_"):
        return (lambda q, k, v: jax.nn.dot_product_attention(
            q, k, v, is_causal=True, implementation=impl[len("dense_"):])), ("q", "k", "v")
    if impl.startswith("moba_"):
        from kernels.moba import BlockSizes, moba_attention
        sizes = BlockSizes(**cfg.moba.block_sizes)
        return (lambda q, k, v: moba_attention(
            q, k, v, block_size=cfg.moba.block_size, top_k=cfg.moba.top_k,
            implementation=impl[len("moba_"):], block_sizes=sizes)), ("q", "k", "v")
    if impl.startswith("kda_"):
        from kernels.kda import kda
        return (lambda q, k, v, g, beta: kda(q, k, v, g, beta,
                                             implementation=impl[len("kda_"):])[0]), \
            inputs.NAMES
    raise ValueError(f"unknown implementation {impl!r}: use dense_<xla|cudnn>, "
                     f"moba_<impl>, kda_<impl> or one of {', '.join(anchors.ANCHORS)}")


def jax_call(impl: str, arrays: dict, mode: str, cfg):
    """A zero-argument call of ``impl`` on ``arrays`` that returns when the device is done."""
    import jax
    import jax.numpy as jnp

    f, names = jax_fn(impl, cfg)
    x = inputs.to_jax(arrays, jnp.dtype(cfg.dtype))
    args = tuple(x[n] for n in names)
    if mode == "fwd":
        fn = jax.jit(f)
    else:
        fn = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a).astype(jnp.float32)),
                              argnums=tuple(range(len(args)))))
    return lambda: jax.block_until_ready(fn(*args))


def prepare_inputs(cfg, out: str, log=print) -> None:
    """The ``inputs`` job: every length's inputs drawn and cached (``inputs.prepare``)."""
    for t in cfg.seq_lens:
        start = time.time()
        inputs.prepare(cfg.cache_dir, cfg.batch, t, cfg.heads, cfg.head_dim)
        records.append(out, dict(section="attention", kind="inputs", seq_len=int(t),
                                 seconds=round(time.time() - start, 2)))
        log(f"[attention] inputs T={t}: {time.time() - start:.1f} s")


def run_item(impl: str, cfg, out: str, deadline: float, log=print) -> None:
    """Times ``impl`` at every length and mode (or, for ``inputs``, draws the inputs)."""
    if impl == "inputs":
        return prepare_inputs(cfg, out, log)
    if impl in anchors.ANCHORS:
        reason = anchors.unavailable(impl)
        if reason:
            records.append(out, dict(section="attention", kind="skipped", impl=impl,
                                     reason=reason))
            log(f"[attention] {impl}: skipped ({reason})")
            return
    last = {m: 0.0 for m in MODES}
    for t in cfg.seq_lens:
        base = dict(section="attention", impl=impl, seq_len=int(t), batch=cfg.batch,
                    heads=cfg.heads, head_dim=cfg.head_dim, dtype=cfg.dtype)
        arrays = inputs.load(cfg.cache_dir, cfg.batch, t, cfg.heads, cfg.head_dim)
        for mode in MODES:
            left = deadline - time.time()
            if left < last[mode]:
                records.append(out, dict(base, mode=mode, kind="skipped",
                                         reason=f"{left:.0f} s left in the job, the "
                                                f"previous {mode} point took {last[mode]:.0f} s"))
                log(f"[attention] {impl} T={t} {mode}: skipped, {left:.0f} s left")
                continue
            rec = dict(base, mode=mode, flops=needed_flops(impl, mode, cfg, t))
            try:
                if impl in anchors.ANCHORS:
                    call = anchors.make_call(impl, arrays, mode)
                else:
                    call = jax_call(impl, arrays, mode, cfg)
                rec.update(records.time_call(call, iters=cfg.iters,
                                             max_seconds=cfg.max_seconds_per_point))
                rec.update(kind="point", tflops_per_s=rec["flops"] / rec["time_s"] / 1e12)
                log(f"[attention] {impl:<14} T={t:>7} {mode:<8} {rec['time_s'] * 1e3:9.2f} ms "
                    f"{rec['tflops_per_s']:8.1f} TFLOP/s  (warm-up {rec['warmup_s']:.1f} s, "
                    f"{len(rec['times_s'])} timed)")
            except Exception as e:  # report, carry on with the next point
                rec.update(kind="error", error=records.short_error(e))
                log(f"[attention] {impl} T={t} {mode}: FAILED {rec['error']}")
            finally:
                call = None
            records.append(out, rec)
            if rec["kind"] == "point":
                last[mode] = rec["warmup_s"] + sum(rec["times_s"])
        del arrays
