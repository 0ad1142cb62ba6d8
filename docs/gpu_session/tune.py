"""MoBA Pallas tiling variants at H=16, and a profile of one fwd+bwd (MoBA and KDA)."""
import glob, gzip, json, os, sys, time, traceback, collections
import jax, jax.numpy as jnp
from configs import bench_attention
from kernels import bench

out = sys.argv[1]
cfg = bench_attention.get_config("gpu")
H, T = 16, 16384
args = bench.make_inputs(T, cfg, heads=H)
for br, bk, nw, ns in [(128, 64, 4, 2), (64, 64, 4, 2), (128, 128, 8, 2), (64, 128, 4, 2),
                       (256, 64, 8, 2), (128, 64, 8, 3)]:
    cfg.block_sizes = dict(block_rows=br, block_k=bk, num_warps=nw, num_stages=ns)
    try:
        med, times, warm = bench.median_time(bench.timed_fn("moba_pallas", "fwd_bwd", cfg), args, 5, 1.0)
        print(f"[tune] H={H} T={T} block_rows={br} block_k={bk} warps={nw} stages={ns}: "
              f"fwd_bwd {med * 1e3:.2f} ms (warm-up {warm:.1f} s)", flush=True)
    except Exception as e:
        print(f"[tune] {br},{bk},{nw},{ns} FAILED {bench._short_error(e)}", flush=True)
cfg = bench_attention.get_config("gpu")
for name in ("moba_pallas", "kda_pallas", "dense_cudnn"):
    try:
        fn = bench.timed_fn(name, "fwd_bwd", cfg)
        jax.block_until_ready(fn(*args))
        d = f"/tmp/prof_{name}"
        with jax.profiler.trace(d):
            for _ in range(3):
                jax.block_until_ready(fn(*args))
        files = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)
        ev = json.load(gzip.open(files[0]))
        pids = {e["pid"]: e["args"]["name"] for e in ev.get("traceEvents", [])
                if e.get("ph") == "M" and e.get("name") == "process_name"}
        tot = collections.Counter(); cnt = collections.Counter()
        for e in ev.get("traceEvents", []):
            if e.get("ph") == "X" and "dur" in e:
                key = (pids.get(e["pid"], "?")[:30], e["name"][:90])
                tot[key] += e["dur"] / 3; cnt[key] += 1
        print(f"[profile] {name} H={H} T={T} fwd_bwd, per call (us), top 25:")
        for (p, n), us in tot.most_common(25):
            print(f"   {us:10.1f} us  x{cnt[(p, n)] // 3:<4} {p:<30} {n}")
    except Exception:
        print(f"[profile] {name} FAILED"); traceback.print_exc()
