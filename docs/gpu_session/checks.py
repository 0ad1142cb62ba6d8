"""GPU correctness: Pallas kernels vs reference/xla, f32 and bf16, head_dim 64 and 128."""
import time, traceback
import jax, jax.numpy as jnp, numpy as np
from kernels import bench, bench_kda
from kernels.moba import moba_attention, BlockSizes

print("jax", jax.__version__, jax.devices(), flush=True)

def rel(a, b):
    a = np.asarray(a, np.float32); b = np.asarray(b, np.float32)
    return float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) + 1e-30))

def moba_case(B, T, H, Hkv, D, bs, k, dt, impl_ref, sizes=None):
    ks = jax.random.split(jax.random.key(0), 4)
    q = jax.random.normal(ks[0], (B, T, H, D), jnp.float32).astype(dt)
    kk = jax.random.normal(ks[1], (B, T, Hkv, D), jnp.float32).astype(dt)
    v = jax.random.normal(ks[2], (B, T, Hkv, D), jnp.float32).astype(dt)
    w = jax.random.normal(ks[3], (B, T, H, D), jnp.float32)
    def run(impl):
        def f(q, kk, v):
            o = moba_attention(q, kk, v, block_size=bs, top_k=k, implementation=impl,
                               block_sizes=sizes)
            return jnp.sum(o.astype(jnp.float32) * w), o
        (l, o), g = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))(q, kk, v)
        return [o, *g]
    a, b = run("pallas"), run(impl_ref)
    errs = {n: rel(x, y) for n, x, y in zip(("o", "dq", "dk", "dv"), a, b)}
    print(f"[moba] B={B} T={T} H={H}/{Hkv} D={D} bs={bs} top{k} {jnp.dtype(dt).name} "
          f"pallas vs {impl_ref}: " + ", ".join(f"{n}={e:.2e}" for n, e in errs.items()), flush=True)

for args in [(1, 2048, 4, 2, 64, 256, 3, jnp.float32, "reference"),
             (1, 2048, 4, 2, 128, 256, 3, jnp.float32, "reference"),
             (2, 1000, 4, 4, 128, 128, 4, jnp.float32, "reference"),
             (1, 4096, 8, 8, 128, 512, 3, jnp.bfloat16, "reference"),
             (1, 16384, 4, 4, 128, 512, 3, jnp.bfloat16, "xla")]:
    try:
        t0 = time.time(); moba_case(*args); print(f"   ({time.time() - t0:.1f} s)", flush=True)
    except Exception:
        print("[moba] FAILED", args); traceback.print_exc()

t0 = time.time()
bench_kda.kda_gpu_check(sizes=((1, 256, 2, 64, "float32"), (2, 1000, 4, 64, "float32"),
                           (1, 256, 2, 128, "float32"), (2, 1000, 4, 128, "float32"),
                           (1, 4096, 8, 128, "bfloat16")), seq_lens=())
print(f"   kda checks ({time.time() - t0:.1f} s)", flush=True)
