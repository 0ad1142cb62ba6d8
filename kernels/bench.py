"""Attention benchmark: dense causal attention vs MoBA and KDA, forward and forward+backward.

``run(cfg, workdir)`` times every implementation in ``cfg.implementations`` at
every length in ``cfg.seq_lens`` (median of ``cfg.iters`` runs after a warm-up
call that also compiles), prints one line per measurement, and writes
``bench.json`` and ``bench.png`` (log-log time vs T) into ``workdir``.
Entry point: ``experiments/benchmark.py``; configs: ``configs/bench_attention.py``.

KDA alone, without a config (``kda_run``, ``kda_gpu_check``): ``kernels/bench_kda.py``.

Implementations (names in ``cfg.implementations``, each mapped to the largest
``T x heads`` it is run at, ``0`` meaning no limit):

* ``dense_xla`` / ``dense_cudnn``: ``jax.nn.dot_product_attention(is_causal=True)``
  with ``implementation="xla"`` / ``"cudnn"``;
* ``moba_<impl>``: ``kernels.moba.moba_attention(implementation=<impl>)``;
* ``moba_routing``: MoBA's routing alone (forward only; no FLOPs counted);
* ``kda_<impl>``: ``kernels.kda.kda(implementation=<impl>)`` (``reference``: the token
  recurrence, ``xla``: chunked, ``pallas``) on the same q, k, v, with q and k
  L2-normalised and a fixed decay ``g = -0.5 sigmoid(v - 2)`` (in ``[-0.5, 0]``, one per
  key channel, so it needs ``head_dim`` equal for keys and values) and
  ``beta = sigmoid(q[..., 0])``; gradients flow into q, k, v.

FLOPs are the ones the computation *needs* (multiply-adds x 2, both matmuls):
dense causal ``4 * D * T(T+1)/2`` per head forward; MoBA ``4 * D * sum_t (keys
attended by t)``; KDA kda.md's ``6 T D^2 + 3 T C D + T C^2`` (chunk ``C = 64``);
backward counted as twice the forward.  Every failure (no
cuDNN, out of memory, a kernel error) is caught, printed and recorded, and the
run carries on.
"""
from __future__ import annotations

import json
import os
import statistics
import time
import traceback
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from kernels.bench_report import ROUTING, plot, table  # table: also kernels.bench.table
from kernels.kda import kda, l2_normalize
from kernels.moba import BlockSizes, moba_attention

MODES = ("fwd", "fwd_bwd")


# --- FLOPs ---------------------------------------------------------------------------

def dense_causal_flops(seq_len: int, head_dim: int, heads: int = 1, batch: int = 1) -> float:
    """Forward FLOPs of causal attention: QK^T and PV over the ``T(T+1)/2`` causal pairs."""
    return 4.0 * head_dim * heads * batch * seq_len * (seq_len + 1) / 2


def moba_pairs(seq_len: int, block_size: int, top_k: int) -> int:
    """(query, key) pairs MoBA attends to, per head: causal current block + past blocks."""
    t = np.arange(seq_len)
    current = t // block_size
    in_current = t - current * block_size + 1
    past_blocks = np.minimum(top_k - 1, current)  # past blocks are always full
    return int(np.sum(in_current + past_blocks * block_size))


def moba_flops(seq_len: int, head_dim: int, block_size: int, top_k: int, heads: int = 1,
               batch: int = 1) -> float:
    return 4.0 * head_dim * heads * batch * moba_pairs(seq_len, block_size, top_k)


KDA_CHUNK = 64


def kda_flops(seq_len: int, head_dim: int, heads: int = 1, batch: int = 1) -> float:
    """kda.md's forward cost of the chunked algorithm per head, times heads and batch."""
    c, d = KDA_CHUNK, head_dim
    return heads * batch * seq_len * (6.0 * d * d + 3.0 * c * d + c * c)


def needed_flops(name: str, mode: str, cfg, heads: int | None = None) -> Callable[[int], float]:
    """FLOPs the computation needs at length ``t`` (``None`` for ``moba_routing``, whose
    work is not attention)."""
    h = heads or _head_counts(cfg)[0]

    def flops(t):
        if name == ROUTING:
            return None
        if name.startswith("kda"):
            f = kda_flops(t, cfg.head_dim, h, cfg.batch)
        elif name.startswith("dense"):
            f = dense_causal_flops(t, cfg.head_dim, h, cfg.batch)
        else:
            f = moba_flops(t, cfg.head_dim, cfg.block_size, cfg.top_k, h, cfg.batch)
        return f * (3.0 if mode == "fwd_bwd" else 1.0)
    return flops


def _head_counts(cfg) -> tuple[int, ...]:
    """The head counts every length is timed at."""
    return tuple(int(h) for h in cfg.head_counts)


def modes_for(name: str) -> tuple[str, ...]:
    """``moba_routing`` has no backward (routing is a discrete, gradient-free choice)."""
    return ("fwd",) if name == ROUTING else MODES


# --- the functions timed -------------------------------------------------------------

def attention_fn(name: str, cfg) -> Callable[..., jax.Array]:
    """``f(q, k, v) -> out`` for an implementation name (see module docstring)."""
    if name == ROUTING:
        return _routing_fn(cfg)
    if name.startswith("dense_"):
        impl = name[len("dense_"):]
        return lambda q, k, v: jax.nn.dot_product_attention(q, k, v, is_causal=True,
                                                            implementation=impl)
    if name.startswith("moba_"):
        impl = name[len("moba_"):]
        sizes = BlockSizes(**cfg.block_sizes) if cfg.get("block_sizes") else None
        return lambda q, k, v: moba_attention(q, k, v, block_size=cfg.block_size,
                                              top_k=cfg.top_k, implementation=impl,
                                              block_sizes=sizes)
    if name.startswith("kda_"):
        return _kda_fn(name[len("kda_"):])
    raise ValueError(f"unknown implementation {name!r}; use dense_xla, dense_cudnn, "
                     "moba_<reference|xla|pallas|pallas_tpu|pallas_gpu> or "
                     "kda_<reference|xla|pallas>.")


def _routing_fn(cfg) -> Callable[..., Any]:
    """MoBA's routing as the sparse paths run it: ``select_slots`` then ``make_plan``
    (``kernels/moba/dispatch.py``); returns the plan's tables."""
    from kernels.moba import dispatch, selection

    sizes = BlockSizes(**cfg.block_sizes) if cfg.get("block_sizes") else BlockSizes()

    def f(q, k, v):
        del v
        geo = dispatch.Geometry(batch=q.shape[0], seq_len=q.shape[1], num_q_heads=q.shape[2],
                                num_kv_heads=k.shape[2], head_dim=q.shape[3],
                                block_size=cfg.block_size, top_k=cfg.top_k,
                                rows_per_tile=sizes.block_rows)
        slots = selection.select_slots(q, k, block_size=cfg.block_size, top_k=cfg.top_k)
        return dispatch.make_plan(slots, geo)
    return f


def _kda_fn(impl: str) -> Callable[..., jax.Array]:
    def f(q, k, v):
        g = -0.5 * jax.nn.sigmoid(v.astype(jnp.float32) - 2.0)
        beta = jax.nn.sigmoid(q[..., 0].astype(jnp.float32))
        o, _ = kda(l2_normalize(q).astype(v.dtype), l2_normalize(k).astype(v.dtype), v, g,
                   beta, chunk_size=KDA_CHUNK, implementation=impl)
        return o
    return f


def timed_fn(name: str, mode: str, cfg) -> Callable[..., Any]:
    f = attention_fn(name, cfg)
    if mode == "fwd":
        return jax.jit(f)
    loss = lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32))
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def make_inputs(seq_len: int, cfg, seed: int = 0, heads: int | None = None):
    """Random ``q, k, v`` of ``[batch, seq_len, heads, head_dim]`` (kv heads = query heads)."""
    dtype = jnp.dtype(cfg.dtype)
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    b, d = cfg.batch, cfg.head_dim
    h = hkv = heads or _head_counts(cfg)[0]
    return (jax.random.normal(kq, (b, seq_len, h, d), dtype),
            jax.random.normal(kk, (b, seq_len, hkv, d), dtype),
            jax.random.normal(kv, (b, seq_len, hkv, d), dtype))


def median_time(fn, args, iters: int, max_seconds: float = 0.0) -> tuple[float, list[float], float]:
    """(median seconds, all timings, warm-up seconds incl. compile).

    Times up to ``iters`` calls after one warm-up call; with ``max_seconds > 0`` it stops
    early once the timed calls took that long together (at least one call is timed).
    """
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    warmup = time.perf_counter() - start
    times = []
    for _ in range(max(iters, 1)):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
        if max_seconds > 0 and sum(times) >= max_seconds:
            break
    return statistics.median(times), times, warmup


def _short_error(e: BaseException) -> str:
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


# --- analysis ------------------------------------------------------------------------

def fit_exponent(lens, times) -> float:
    """Least-squares slope of log(time) vs log(T)."""
    slope, _ = np.polyfit(np.log(np.asarray(lens, float)), np.log(np.asarray(times, float)), 1)
    return float(slope)


def _lookup(results, name, mode, t, heads):
    for r in results:
        if ((r["impl"], r["mode"], r["seq_len"]) == (name, mode, t)
                and r["heads"] == heads and r.get("time_s")):
            return r["time_s"]
    return None


def speedups(results, cfg) -> list[dict]:
    """MoBA and KDA time vs the fastest dense time at the same (heads, mode, T)."""
    out = []
    dense = [n for n in cfg.implementations if n.startswith("dense")]
    for r in results:
        if (not r["impl"].startswith(("moba", "kda")) or r["impl"] == ROUTING
                or not r.get("time_s")):
            continue
        base = [(_lookup(results, d, r["mode"], r["seq_len"], r["heads"]), d) for d in dense]
        base = [(t, d) for t, d in base if t]
        if base:
            t_dense, d = min(base)
            out.append(dict(impl=r["impl"], mode=r["mode"], seq_len=r["seq_len"],
                            heads=r["heads"], baseline=d, speedup=t_dense / r["time_s"]))
    return out


def _check_pairs(cfg) -> list[tuple[str, str]]:
    """``(impl, against)`` pairs from ``cfg.checks`` ("impl:against")."""
    pairs = []
    for item in cfg.checks:
        impl, sep, against = str(item).partition(":")
        if not sep or not impl or not against:
            raise ValueError(f"checks: {item!r} must read 'impl:against', e.g. "
                             "'moba_pallas:moba_xla'")
        pairs.append((impl, against))
    return pairs


def check_against(cfg, log) -> list[dict]:
    """Max abs / relative error of each checked implementation against its reference
    (output and the gradients of q, k, v), at ``check_seq_lens`` with ``check_heads``."""
    checks = []
    pairs = _check_pairs(cfg)
    lens, heads = tuple(cfg.check_seq_lens), int(cfg.check_heads)
    for impl, against in pairs:
        for t in lens:
            args = make_inputs(t, cfg, seed=1, heads=heads)
            try:
                res = {}
                for name in (impl, against):
                    f = attention_fn(name, cfg)
                    loss = lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32))
                    out = jax.jit(f)(*args)
                    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(*args)
                    res[name] = [np.asarray(x, np.float32) for x in (out, *grads)]
                for label, a, b in zip(("out", "dq", "dk", "dv"), res[impl], res[against]):
                    abs_err = float(np.max(np.abs(a - b)))
                    rel_err = abs_err / max(float(np.max(np.abs(b))), 1e-30)
                    checks.append(dict(impl=impl, against=against, seq_len=t, heads=heads,
                                       tensor=label, max_abs_err=abs_err, max_rel_err=rel_err))
                    log(f"check T={t:>7} {label:>3}: {impl} vs {against} "
                        f"max abs err {abs_err:.3e}  max rel err {rel_err:.3e}")
            except Exception as e:  # report, don't die
                checks.append(dict(impl=impl, against=against, seq_len=t, heads=heads,
                                   error=_short_error(e)))
                log(f"check T={t:>7}: {impl} vs {against} FAILED {_short_error(e)}")
    return checks


# --- driver --------------------------------------------------------------------------

def _write_partial(workdir: str, cfg, results, checks) -> None:
    """``bench.json`` with what is measured so far (``"partial": true``), so a run cut
    short by a time limit keeps its numbers; :func:`run` overwrites it at the end."""
    path = os.path.join(workdir, "bench.json")
    with open(path + ".tmp", "w") as f:
        json.dump(dict(partial=True, config=cfg.to_dict(), jax_version=jax.__version__,
                       backend=jax.default_backend(), results=results, checks=checks),
                  f, indent=1, default=str)
    os.replace(path + ".tmp", path)


def run(cfg, workdir: str, log: Callable[[str], None] | None = None) -> dict:
    """Runs the benchmark described by ``cfg``; returns and writes the results."""
    log = log or (lambda s: print(s, flush=True))
    os.makedirs(workdir, exist_ok=True)
    device = jax.devices()[0]
    heads_list = _head_counts(cfg)
    log(f"jax {jax.__version__} on {jax.default_backend()} ({device.device_kind}); "
        f"B={cfg.batch} H={','.join(map(str, heads_list))} D={cfg.head_dim} {cfg.dtype} "
        f"block={cfg.block_size} top_k={cfg.top_k}")
    checks = check_against(cfg, log)
    budget = float(cfg.get("max_seconds_per_point", 0.0))

    results = []
    for h in heads_list:
        for t in cfg.seq_lens:
            args = make_inputs(t, cfg, heads=h)
            for name, max_work in cfg.implementations.items():
                if max_work and t * h > max_work:
                    continue
                for mode in modes_for(name):
                    rec = dict(impl=name, mode=mode, seq_len=t, heads=h,
                               flops=needed_flops(name, mode, cfg, h)(t))
                    try:
                        med, times, warm = median_time(timed_fn(name, mode, cfg), args,
                                                       cfg.iters, budget)
                        rec.update(time_s=med, times_s=times, warmup_s=warm)
                        rate = ""
                        if rec["flops"]:
                            rec["tflops_per_s"] = rec["flops"] / med / 1e12
                            rate = f"{rec['tflops_per_s'] * 1e3:10.1f} GFLOP/s"
                        log(f"H={h:>3} T={t:>7} {name:<16} {mode:<8} {med * 1e3:10.2f} ms "
                            f"{rate:>18}  (warm-up {warm:.1f} s, {len(times)} timed)")
                    except Exception as e:  # report, don't die
                        rec["error"] = _short_error(e)
                        log(f"H={h:>3} T={t:>7} {name:<16} {mode:<8} FAILED {rec['error']}")
                        if cfg.get("verbose_errors"):
                            log(traceback.format_exc())
                    results.append(rec)
                    _write_partial(workdir, cfg, results, checks)
            del args

    ups = speedups(results, cfg)
    for s in ups:
        log(f"speedup H={s['heads']:>3} T={s['seq_len']:>7} {s['impl']:<16} {s['mode']:<8} "
            f"{s['speedup']:7.2f}x vs {s['baseline']}")
    fits = {}
    lo, hi = cfg.fit_range
    for h in heads_list:
        for name in cfg.fit_impls:
            for mode in modes_for(name):
                pts = [(r["seq_len"], r["time_s"]) for r in results if r["impl"] == name
                       and r["mode"] == mode and r["heads"] == h and r.get("time_s")
                       and lo <= r["seq_len"] <= hi]
                if len(pts) >= 2:
                    key = f"{name}/{mode}" if len(heads_list) == 1 else f"{name}/{mode}/H{h}"
                    fits[key] = fit_exponent(*zip(*pts))
                    log(f"fit {name} {mode} H={h}: time ~ T^{fits[key]:.3f} "
                        f"(T={lo}..{hi}, {len(pts)} points)")

    summary = dict(config=cfg.to_dict(), jax_version=jax.__version__,
                   backend=jax.default_backend(), device=device.device_kind,
                   results=results, speedups=ups, exponents=fits, checks=checks)
    with open(os.path.join(workdir, "bench.json"), "w") as f:
        json.dump(summary, f, indent=1, default=str)
    try:
        plot(results, os.path.join(workdir, "bench.png"),
             f"causal attention vs MoBA / KDA ({jax.default_backend()}, {cfg.dtype}, "
             f"block {cfg.block_size}, top-{cfg.top_k})")
    except Exception as e:  # a missing plot should not lose the numbers
        log(f"plot failed: {_short_error(e)}")
    log(table(summary))
    log(f"wrote {os.path.join(workdir, 'bench.json')} and bench.png")
    return summary
