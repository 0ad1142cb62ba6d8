"""Token-by-token KDA recurrence: the slow, obviously-correct ground truth.

Every faster path (chunked XLA, Pallas) is tested against this function. It walks the
sequence one token at a time with ``lax.scan``, keeping the per-head state
``S`` (``[K, V]``) in float32:

    S <- exp(g_t)[:, None] * S                       # per-key-channel decay (rows)
    S <- S + beta_t * k_t (v_t - S^T k_t)^T          # delta-rule correction
    o_t = S^T (scale * q_t)

Cost is ``O(T K V)`` sequential work, so use it for tests and small shapes only.
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax

_HIGHEST = lax.Precision.HIGHEST


def kda_reference(q_BTHK, k_BTHK, v_BTHV, g_BTHK, beta_BTH, *, scale, initial_state_BHKV=None):
    """Runs the KDA recurrence in float32; returns ``(o_BTHV float32, state_BHKV float32)``.

    Inputs are assumed validated (see ``kernels.kda.kda``); q and k are used as given
    (no normalisation); ``scale`` multiplies q.
    """
    f32 = jnp.float32
    B, _, H, K = q_BTHK.shape
    V = v_BTHV.shape[-1]
    # Time-major for the scan.
    q_TBHK = jnp.moveaxis(q_BTHK.astype(f32) * scale, 1, 0)
    k_TBHK = jnp.moveaxis(k_BTHK.astype(f32), 1, 0)
    v_TBHV = jnp.moveaxis(v_BTHV.astype(f32), 1, 0)
    g_TBHK = jnp.moveaxis(g_BTHK.astype(f32), 1, 0)
    beta_TBH = jnp.moveaxis(beta_BTH.astype(f32), 1, 0)
    if initial_state_BHKV is None:
        state_BHKV = jnp.zeros((B, H, K, V), f32)
    else:
        state_BHKV = initial_state_BHKV.astype(f32)

    def step(S_BHKV, xs):
        q_BHK, k_BHK, v_BHV, g_BHK, beta_BH = xs
        S_BHKV = jnp.exp(g_BHK)[..., None] * S_BHKV
        recalled_BHV = jnp.einsum("bhkv,bhk->bhv", S_BHKV, k_BHK, precision=_HIGHEST)
        delta_BHV = beta_BH[..., None] * (v_BHV - recalled_BHV)
        S_BHKV = S_BHKV + k_BHK[..., :, None] * delta_BHV[..., None, :]
        o_BHV = jnp.einsum("bhkv,bhk->bhv", S_BHKV, q_BHK, precision=_HIGHEST)
        return S_BHKV, o_BHV

    state_BHKV, o_TBHV = lax.scan(step, state_BHKV, (q_TBHK, k_TBHK, v_TBHV, g_TBHK, beta_TBH))
    return jnp.moveaxis(o_TBHV, 0, 1), state_BHKV
