"""Test helpers for the KDA tests (``tests/kernels/test_kda*.py``): inputs, an independent
float64 numpy recurrence written from kda.md (never calls the library), relative-RMS
metrics and per-dtype tolerances."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Relative RMS tolerances per dtype (bf16 values from kda.md's reference tolerances).
TOL = {
    "float32": dict(o=1e-5, state=1e-5, dq=1e-5, dk=1e-5, dv=1e-5, dg=1e-5, dbeta=1e-5,
                    ds0=1e-5),
    "bfloat16": dict(o=5e-3, state=5e-3, dq=8e-3, dk=8e-3, dv=8e-3, dg=2e-2, dbeta=2e-2,
                     ds0=5e-3),
}
GRAD_NAMES = ("dq", "dk", "dv", "dg", "dbeta", "ds0")


def make_inputs(B=1, T=100, H=2, K=32, V=16, *, dtype="float32", g_min=-3.0, g_max=0.0,
                seed=0):
    """Normalised q, k (cast to ``dtype``), v, g ~ U[g_min, g_max], beta ~ U(0.05, 0.95),
    float32 initial state, plus fixed cotangent weights for o and the state."""
    rng = np.random.default_rng(seed)
    l2 = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    dt = jnp.dtype(dtype)
    q = jnp.asarray(l2(rng.standard_normal((B, T, H, K))), dt)
    k = jnp.asarray(l2(rng.standard_normal((B, T, H, K))), dt)
    v = jnp.asarray(rng.standard_normal((B, T, H, V)), dt)
    g = jnp.asarray(rng.uniform(g_min, g_max, (B, T, H, K)), jnp.float32)
    beta = jnp.asarray(rng.uniform(0.05, 0.95, (B, T, H)), jnp.float32)
    s0 = jnp.asarray(rng.standard_normal((B, H, K, V)), jnp.float32)
    w_o = jnp.asarray(rng.standard_normal((B, T, H, V)), jnp.float32)
    w_s = jnp.asarray(rng.standard_normal((B, H, K, V)), jnp.float32)
    return (q, k, v, g, beta, s0), (w_o, w_s)


def numpy_kda(q, k, v, g, beta, s0, scale):
    """Independent float64 loop in the matrix form of kda.md:
    ``S_t = (I - beta_t k_t k_t^T) Diag(alpha_t) S_{t-1} + beta_t k_t v_t^T``,
    ``o_t = S_t^T (scale q_t)``."""
    q, k, v, g, beta, s0 = (np.asarray(x, np.float64) for x in (q, k, v, g, beta, s0))
    B, T, H, K = q.shape
    o = np.zeros(v.shape)
    S_all = s0.copy()
    for b in range(B):
        for h in range(H):
            S = S_all[b, h]
            for t in range(T):
                kt = k[b, t, h][:, None]
                P = np.eye(K) - beta[b, t, h] * kt @ kt.T
                S = P @ np.diag(np.exp(g[b, t, h])) @ S + beta[b, t, h] * kt @ v[b, t, h][None, :]
                o[b, t, h] = S.T @ (scale * q[b, t, h])
            S_all[b, h] = S
    return o, S_all


def rel_rms(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    return float(np.sqrt(np.mean((a - b) ** 2)) / (np.sqrt(np.mean(b ** 2)) + 1e-30))


def value_and_grads(fn, args, weights):
    """``fn(q, k, v, g, beta, s0) -> (o, state)``; returns dict of o, state and grads of
    ``sum(o * w_o) + sum(state * w_s)`` w.r.t. all six inputs."""
    w_o, w_s = weights

    def loss(*a):
        o, s = fn(*a)
        return jnp.sum(o.astype(jnp.float32) * w_o) + jnp.sum(s * w_s), (o, s)

    # Compiled: the chunked algebra dispatched op by op is several times slower.
    grads, (o, s) = jax.jit(jax.grad(loss, argnums=tuple(range(6)), has_aux=True))(*args)
    out = dict(o=o, state=s)
    out.update(zip(GRAD_NAMES, grads))
    return out


def assert_close(got, want, dtype, names=None):
    tol = TOL[jnp.dtype(dtype).name]
    errs = {n: rel_rms(got[n], want[n]) for n in (names or want)}
    for n, e in errs.items():
        assert np.all(np.isfinite(np.asarray(got[n], np.float32))), f"{n} not finite"
        assert e <= tol[n], f"{n}: rel RMS error {e:.3g} > {tol[n]:.3g} (all: {errs})"
    return errs
