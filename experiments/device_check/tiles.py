"""Section (c): MoBA's Pallas tilings at one shape (forward+backward, the attention
section's inputs and timing rule), one record per tiling ``(block_rows, block_k,
num_warps, num_stages)``; a tiling the kernel cannot take (too much shared memory, a
shape it refuses) is recorded with its error and the sweep goes on."""
from __future__ import annotations

import time

from experiments.device_check import attention, inputs, records


def run_item(impl: str, cfg, out: str, deadline: float, log=print) -> None:
    t = int(cfg.tiles.seq_len)
    inputs.prepare(cfg.cache_dir, cfg.batch, t, cfg.heads, cfg.head_dim)
    arrays = inputs.load(cfg.cache_dir, cfg.batch, t, cfg.heads, cfg.head_dim)
    last = 0.0
    for rows, bk, warps, stages in cfg.tiles.tilings:
        sizes = dict(block_rows=rows, block_k=bk, num_warps=warps, num_stages=stages)
        base = dict(section="tiles", impl=impl, mode="fwd_bwd", seq_len=t,
                    heads=cfg.heads, head_dim=cfg.head_dim, dtype=cfg.dtype, **sizes)
        if deadline - time.time() < last:
            records.append(out, dict(base, kind="skipped", reason="job deadline"))
            continue
        start = time.time()
        c = cfg.copy_and_resolve_references()
        c.moba.block_sizes = sizes
        try:
            rec = records.time_call(attention.jax_call(impl, arrays, "fwd_bwd", c),
                                    iters=cfg.iters, max_seconds=cfg.max_seconds_per_point)
            rec.update(base, kind="point")
            log(f"[tiles] {sizes}: {rec['time_s'] * 1e3:.2f} ms (warm-up {rec['warmup_s']:.1f} s)")
        except Exception as e:  # the next tiling runs
            rec = dict(base, kind="error", error=records.short_error(e))
            log(f"[tiles] {sizes}: FAILED {rec['error']}")
        records.append(out, rec)
        last = time.time() - start
