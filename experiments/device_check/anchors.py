"""The KDA anchors: two external Kimi Delta Attention implementations, timed beside ours on
the same inputs (``inputs.py``) and checked against our xla path.

* ``fla_chunk_kda``: ``fla.ops.kda.chunk_kda`` of flash-linear-attention (PyPI ``fla-core``
  0.6.0; PyTorch + Triton kernels, chunk 64; the kernels are listed in
  ``shared/design/gpu_kernels.md``, Sec. 2-3).
* ``jla_kda``: ``jla.ops.mosaic_gpu.kda.kda`` of jax-linear-attention (PyPI
  ``jax-linear-attention`` 0.1.0, which pins jax 0.11.2; Pallas Mosaic GPU kernels for sm_90
  only; Sec. 5 of the same note).

Neither is a dependency of the project: ``fetch_wheels.sh`` beside this file fetches the
wheels a GPU machine's image lacks. Without them (or without a GPU) :func:`unavailable`
says what is missing, and the device check records the anchor as skipped.

Argument mapping. Our op is ``kernels.kda.kda(q, k, v, g, beta)``: ``q, k [B, T, H, K]``
already L2-normalised, ``v [B, T, H, V]``, ``g [B, T, H, K]`` the natural-log decay per key
channel (``<= 0``), ``beta [B, T, H]`` the write strength in ``[0, 1]``, ``scale = K^-1/2``
on q, ``S_t = (I - beta_t k_t k_t^T) Diag(exp(g_t)) S_{t-1} + beta_t k_t v_t^T``,
``o_t = S_t^T (scale q_t)``. Both anchors take the same arrays unchanged, read from the
wheels' source named here (and, where marked, the FLA repository at commit bc3b101):

* FLA 0.6.0, ``chunk_kda(q, k, v, g, beta, scale=None, ...)`` (``fla/ops/kda/chunk.py``):
  layout ``[B, T, H, K]``, not head-first (its docstring; ``v`` may have more heads,
  GVA, unused here). ``g`` is "the pre-computed decay value" in log space when
  ``use_gate_in_kernel=False`` (the default), and natural log: its reference
  ``naive_recurrent_kda`` (``fla/ops/kda/naive.py``) decays the state by ``g.exp()`` and
  then applies ``S += (beta k)(v - k^T S)^T``, ``o = (scale q)^T S``, our recurrence
  term for term. The 1/ln2 in the kernels is internal: ``chunk_kda_fwd``
  (``chunk_fwd.py``) takes the chunk cumsum of ``g`` with ``scale=RCP_LN2`` so the kernels
  can use ``exp2``. ``scale`` defaults to ``K ** -0.5`` on q. q and k are normalised in
  kernel only with ``use_qk_l2norm_in_kernel=True`` (default False), beta passes through a
  sigmoid only with ``use_beta_sigmoid_in_kernel=True`` (default False). Dtypes: q, k, v
  bf16 (FLA's tests use the model dtype for q, k, v and float32 for a pre-computed g);
  beta any float, its gradient accumulated in float32 (``chunk_bwd.py``); ``o`` comes back
  in q's dtype and each gradient in its input's dtype. We pass bf16 q, k, v and float32 g
  and beta, as ours gets them.
  One option is set, :data:`FLA_OPTIONS`: ``safe_gate=True``, FLA's fast path, the one
  its own op benchmark registers for ``chunk_kda`` (repository
  ``benchmarks/ops/registry.py``): the 16x16 diagonal blocks of the intra-chunk scores go
  to the tensor cores (bf16x3 on triton >= 3.6) through a fixed anchor shift, instead of
  one program per token on CUDA cores. It needs pre-computed gates bounded below (the
  repository's ``tests/ops/test_kda.py`` clamps them to ``[-5, 0]``); ours lie in
  ``[-0.5, 0)``. Without ``use_gate_in_kernel``, ``lower_bound`` plays no part.
  What FLA has that we do not use: the fused gate (``use_gate_in_kernel`` with ``A_log``,
  ``dt_bias``: ``g = -exp(A_log) softplus(g + dt_bias)``, or ``lower_bound *
  sigmoid(...)`` with ``safe_gate``), which its KDA layer uses together with the in-kernel
  L2 norm and beta sigmoid; ``allow_neg_eigval``; GVA; ``cu_seqlens``; ``state_v_first``;
  ``disable_recompute`` (default False: the backward recomputes w, u and the per-chunk
  states, a second serial pass); context parallelism. Its backend dispatch picks FlashKDA
  (CUTLASS, inference only) only with all three in-kernel flags set, and a TileLang piece
  of the backward only where the ``tilelang`` package and nvcc are installed: with our
  flags and the image's packages the Triton path is what is timed.
* jax-linear-attention 0.1.0, ``jla.ops.mosaic_gpu.kda.kda(q, k, v, g, beta, *,
  scale=None, ..., use_qk_l2norm=False, chunk_size=64, sub_chunk=16)``
  (``jla/ops/mosaic_gpu/kda.py``): "the arguments and conventions of
  ``jla.ops.reference.kda``", whose module docstring (``jla/ops/reference.py``) states
  FLA's layout ``[B, T, H, K]``, ``g`` a log-space forget gate, ``S' = diag(exp(g_t))
  S_{t-1}; S_t = S' + beta_t k_t^T (v_t - k_t S')``, ``o_t = scale q_t S_t``; the kernels
  form every decay with ``exp`` of cumulative ``g`` differences (``vector_gate.py``): natural
  log. ``scale`` defaults to ``K ** -0.5`` (``vector_gate_ops.run``); no normalisation unless
  ``use_qk_l2norm``. It casts ``g`` and ``beta`` to float32 itself and returns ``o`` in q's
  dtype. Limits (``vector_gate_ops.unsupported_reason``): an sm_90 GPU, bf16 q, k, v,
  ``K, V`` in {64, 128}, ``H * K`` a multiple of 128; any ``T`` (padded to the chunk); any
  gate value (exact diagonal blocks; a chunk whose 16-token spans decay by at most 80, as
  ours always do, runs all blocks on the tensor cores). We call this entry point rather
  than ``jla.ops.linear_attention(..., impl="auto")``, so an unsupported call raises
  instead of falling back to plain JAX. Not used: ``segment_ids``, GDN-2 gates,
  ``use_qk_l2norm``. Unlike FLA it saves the per-chunk states in the forward, so its
  backward runs no second forward pass.

Measured conventions on CPU (``tests/test_device_check_anchors.py``): FLA's
``naive_recurrent_kda`` and jla's ``reference.kda``, and jla's Mosaic GPU kernels in
Pallas interpret mode, against ``kernels.kda.kda``. FLA's Triton kernels themselves run
only on a GPU: :func:`check` there.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable

import numpy as np

from experiments.device_check import inputs
from experiments.device_check.records import short_error

ANCHORS = ("fla_chunk_kda", "jla_kda")
MODES = ("fwd", "fwd_bwd")

# ``chunk_kda`` options beyond (q, k, v, g, beta); see the module docstring.
FLA_OPTIONS = dict(safe_gate=True)

# The gradients :func:`check` compares, in ``inputs.NAMES`` order, after ``o``.
CHECKED = ("o",) + tuple(f"d{n}" for n in inputs.NAMES)
CHECK_SEED = 1234       # the seed of the cotangent weights ``w`` of :func:`check`

_WHEELS = ("on the GPU machine, carry the wheels of experiments/device_check/fetch_wheels.sh "
           "(carry .whl, then run the install line it prints)")


def _check_name(name: str) -> None:
    if name not in ANCHORS:
        raise ValueError(f"unknown KDA anchor {name!r}; choose one of {ANCHORS}")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")


# --- availability -------------------------------------------------------------------------

def _fla_unavailable() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return f"torch not installed; {_WHEELS} (the image has torch and triton)"
    if importlib.util.find_spec("fla") is None:
        return f"fla-core (package fla) not installed; pip install fla-core==0.6.0, or {_WHEELS}"
    import torch
    if not torch.cuda.is_available():
        return (f"no CUDA GPU visible to torch {torch.__version__} "
                "(torch.cuda.is_available() is False)")
    try:
        importlib.import_module("fla.ops.kda")
    except Exception as e:  # a broken install, a triton that does not fit, ...
        return f"fla.ops.kda does not import: {short_error(e)}"
    return None


def _jla_unavailable() -> str | None:
    if importlib.util.find_spec("jla") is None:
        return ("jax-linear-attention (package jla) not installed; pip install "
                f"jax-linear-attention==0.1.0 (it pins jax 0.11.2), or {_WHEELS}")
    import jax
    try:
        gpus = jax.devices("gpu")
    except Exception:             # RuntimeError: no such backend
        gpus = []
    if not gpus:
        return (f"no JAX GPU backend (jax {jax.__version__}, default backend "
                f"{jax.default_backend()}); jla's kernels need a CUDA jaxlib and an sm_90 GPU")
    capability = getattr(gpus[0], "compute_capability", None)
    if capability != "9.0":
        return (f"jla's Mosaic GPU KDA kernels need an sm_90 (Hopper) GPU; this one is "
                f"{gpus[0].device_kind} (compute capability {capability})")
    if jax.devices()[0].platform != "gpu":
        return f"JAX's default device is {jax.devices()[0]}, not the GPU; jla runs on the default"
    try:
        importlib.import_module("jla.ops.mosaic_gpu.kda")
    except Exception as e:
        return f"jla.ops.mosaic_gpu.kda does not import: {short_error(e)}"
    return None


_UNAVAILABLE = {"fla_chunk_kda": _fla_unavailable, "jla_kda": _jla_unavailable}


def unavailable(name: str) -> str | None:
    """``None`` when anchor ``name`` can run here, else one line saying what is missing and
    how to get it (an unknown name included). Never raises. Asking about FLA imports torch
    (where installed) and never JAX; asking about jla initialises JAX's backends, and on a GPU
    JAX then holds 75% of its memory by default: keep jla's question out of a process that
    is to time FLA."""
    try:
        _check_name(name)
        return _UNAVAILABLE[name]()
    except Exception as e:
        return f"{name}: {short_error(e)}"


def _require(name: str) -> None:
    reason = unavailable(name)
    if reason is not None:
        raise RuntimeError(f"KDA anchor {name} cannot run here: {reason}")


# --- inputs in each framework -------------------------------------------------------------

def to_torch(arrays: dict, device="cuda", qkv_dtype=None) -> dict:
    """:func:`inputs.load`'s arrays as torch tensors on ``device``: q, k, v bfloat16 (or
    ``qkv_dtype``, converted from the bfloat16 values), g and beta float32. Copies once (the
    cached arrays are read-only memory maps)."""
    import torch
    out = {}
    for n in inputs.NAMES:
        a = np.array(arrays[n])               # a writable copy
        if n in ("q", "k", "v"):
            t = torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
            if qkv_dtype is not None:
                t = t.to(qkv_dtype)
        else:
            t = torch.from_numpy(a.astype(np.float32, copy=False))
        out[n] = t.to(device)
    return out


def _jla_output() -> Callable:
    """``(q, k, v, g, beta) -> o`` through jla's Mosaic GPU KDA."""
    from jla.ops.mosaic_gpu.kda import kda as jla_kda
    return lambda q, k, v, g, beta: jla_kda(q, k, v, g, beta)[0]


def _fla_output() -> Callable:
    """``(q, k, v, g, beta) -> o`` through FLA's ``chunk_kda`` with :data:`FLA_OPTIONS`."""
    from fla.ops.kda import chunk_kda
    return lambda q, k, v, g, beta: chunk_kda(q, k, v, g, beta, **FLA_OPTIONS)[0]


# --- the timed call -----------------------------------------------------------------------

def _fla_call(arrays: dict, mode: str) -> Callable[[], None]:
    import torch
    output = _fla_output()
    t = to_torch(arrays, "cuda")
    if mode == "fwd":
        args = [t[n] for n in inputs.NAMES]

        def call():
            with torch.no_grad():
                output(*args)
            torch.cuda.synchronize()
    else:
        args = [t[n].requires_grad_(True) for n in inputs.NAMES]

        def call():
            torch.autograd.grad(output(*args).float().sum(), args)
            torch.cuda.synchronize()
    return call


def _jla_call(arrays: dict, mode: str) -> Callable[[], None]:
    import jax
    import jax.numpy as jnp
    output = _jla_output()
    x = inputs.to_jax(arrays)
    args = [x[n] for n in inputs.NAMES]
    if mode == "fwd":
        fn = jax.jit(output)
    else:
        fn = jax.jit(jax.grad(lambda *a: jnp.sum(output(*a).astype(jnp.float32)),
                              argnums=tuple(range(len(args)))))

    def call():
        jax.block_until_ready(fn(*args))
    return call


_CALLS = {"fla_chunk_kda": _fla_call, "jla_kda": _jla_call}


def make_call(name: str, arrays: dict, mode: str) -> Callable[[], None]:
    """A zero-argument function that runs anchor ``name`` once on ``arrays`` (the dict of
    :func:`inputs.load`) and returns when the GPU is done: the forward (``mode="fwd"``) or
    the gradients of ``sum(o.float())`` with respect to q, k, v, g and beta
    (``"fwd_bwd"``), as ours are timed. The inputs move to the GPU once, here; the JAX
    anchor is jitted once (the first call compiles; FLA's first call autotunes).

    Raises ``ValueError`` for an unknown name or mode, ``RuntimeError`` when the anchor
    cannot run here (:func:`unavailable` says why)."""
    _check_name(name)
    _check_mode(mode)
    _require(name)
    return _CALLS[name](arrays, mode)


# --- accuracy -----------------------------------------------------------------------------

def _weights(arrays: dict) -> np.ndarray:
    """The fixed cotangent ``w [B, T, H, V]`` of :func:`check`'s loss ``sum(o * w)``."""
    shape = np.shape(arrays["v"])
    return np.random.default_rng(CHECK_SEED).standard_normal(shape, dtype=np.float32)


def _float32_values(arrays: dict) -> dict:
    """The inputs' values as float32 NumPy arrays (bf16 q, k, v converted exactly)."""
    return {n: (inputs.bf16_bits_to_f32(arrays[n]) if n in ("q", "k", "v")
                else np.asarray(arrays[n], np.float32)) for n in inputs.NAMES}


def ours(arrays: dict, w: np.ndarray, implementation: str = "xla") -> dict:
    """``o`` and the gradients of ``sum(o * w)`` from ``kernels.kda.kda`` in float32 on the
    inputs' values, computed on JAX's CPU device (where there is one): exact float32 products,
    and the GPU left to the anchor. Keys :data:`CHECKED`, float32 NumPy arrays."""
    import jax
    import jax.numpy as jnp
    from kernels.kda import kda
    try:
        device = jax.devices("cpu")[0]
    except RuntimeError:          # JAX_PLATFORMS without cpu: the default device
        device = jax.devices()[0]
    values = _float32_values(arrays)
    args = [jax.device_put(values[n], device) for n in inputs.NAMES]
    w_dev = jax.device_put(np.asarray(w, np.float32), device)

    def loss(q, k, v, g, beta):
        o, _ = kda(q, k, v, g, beta, implementation=implementation)
        return jnp.sum(o.astype(jnp.float32) * w_dev), o

    (_, o), grads = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(5)), has_aux=True))(*args)
    return {key: np.asarray(x, np.float32) for key, x in zip(CHECKED, (o, *grads))}


def max_rel_errors(anchor: dict, reference: dict) -> dict[str, float]:
    """``max|a - b| / max|b|`` per key of :data:`CHECKED` (``max|a - b|`` where ``b`` is all
    zero); ``inf`` where the anchor's values are not all finite."""
    out = {}
    for key in CHECKED:
        a = np.asarray(anchor[key], np.float32)
        b = np.asarray(reference[key], np.float32)
        if a.shape != b.shape:
            raise ValueError(f"{key}: anchor shape {a.shape} != reference shape {b.shape}")
        if not np.all(np.isfinite(a)):
            out[key] = float("inf")
            continue
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        diff = float(np.max(np.abs(a - b))) if a.size else 0.0
        out[key] = diff / scale if scale > 0 else diff
    return out


def torch_errors(output: Callable, arrays: dict, device="cuda", qkv_dtype=None,
                 implementation: str = "xla") -> dict[str, float]:
    """:func:`max_rel_errors` of a torch KDA ``output(q, k, v, g, beta) -> o`` (inputs from
    :func:`to_torch`) against :func:`ours`; gradients by ``torch.autograd``."""
    import torch
    # Our side (``ours``) starts JAX after the anchor ran: keep it from taking 75% of the
    # GPU's memory up front in a process whose GPU memory belongs to torch.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    t = to_torch(arrays, device, qkv_dtype)
    args = [t[n].requires_grad_(True) for n in inputs.NAMES]
    w = _weights(arrays)
    o = output(*args)
    loss = (o.float() * torch.from_numpy(w).to(o.device)).sum()
    grads = torch.autograd.grad(loss, args)
    anchor = {key: x.detach().float().cpu().numpy() for key, x in zip(CHECKED, (o, *grads))}
    return max_rel_errors(anchor, ours(arrays, w, implementation))


def jax_errors(output: Callable, arrays: dict, qkv_dtype=None,
               implementation: str = "xla", jit: bool = True) -> dict[str, float]:
    """:func:`max_rel_errors` of a JAX KDA ``output(q, k, v, g, beta) -> o`` (inputs from
    :func:`inputs.to_jax`, q, k, v cast to ``qkv_dtype`` if given) against :func:`ours`.
    ``jit=False`` runs eagerly (Pallas Mosaic GPU kernels in interpret mode hang under
    ``jax.jit`` on CPU)."""
    import jax
    import jax.numpy as jnp
    x = inputs.to_jax(arrays, qkv_dtype)
    args = [x[n] for n in inputs.NAMES]
    w = _weights(arrays)
    w_dev = jnp.asarray(w)

    def loss(*a):
        o = output(*a)
        return jnp.sum(o.astype(jnp.float32) * w_dev), o

    fn = jax.value_and_grad(loss, argnums=tuple(range(5)), has_aux=True)
    (_, o), grads = (jax.jit(fn) if jit else fn)(*args)
    anchor = {key: np.asarray(jnp.asarray(v, jnp.float32)) for key, v in zip(CHECKED, (o, *grads))}
    return max_rel_errors(anchor, ours(arrays, w, implementation))


def check(name: str, arrays: dict) -> dict[str, float]:
    """Anchor ``name``'s ``o`` and gradients of ``sum(o * w)`` (``w`` a fixed standard-normal
    draw, seed :data:`CHECK_SEED`) w.r.t. q, k, v, g, beta against our ``kda(...,
    implementation="xla")`` in float32 on the same values: ``{"o", "dq", "dk", "dv", "dg",
    "dbeta"}`` -> ``max|anchor - ours| / max|ours|``. The anchor runs as timed (bf16 q, k, v
    on the GPU), so these are its bf16 errors plus ours. Raises as :func:`make_call` does."""
    _check_name(name)
    _require(name)
    if name == "fla_chunk_kda":
        return torch_errors(_fla_output(), arrays, "cuda")
    return jax_errors(_jla_output(), arrays)
