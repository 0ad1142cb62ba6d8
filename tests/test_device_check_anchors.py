"""The KDA anchors of the device check (``experiments/device_check/anchors.py``) on CPU.

The anchors' GPU kernels run only on a GPU machine (the device check's accuracy section
calls ``anchors.check`` there). Here: the availability messages, the argument checks, the
error measure, and the argument mapping, by running each anchor's own CPU-runnable
reference on our inputs against ``kernels.kda.kda``: FLA's ``naive_recurrent_kda`` /
``naive_chunk_kda`` (needs torch and fla-core; skipped where they are not installed, as
in CI), jla's ``reference.kda`` and, marked slow, jla's Mosaic GPU kernels in Pallas
interpret mode (needs jax-linear-attention). To run the skipped ones, install those
packages (``experiments/device_check/fetch_wheels.sh`` lists the versions).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.device_check import anchors, inputs
from tests.helpers import REPO

SHAPE = (1, 45, 2, 32)       # B, T, H, D; T a multiple of no chunk size


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:
        return False
    return True


def _gpu_present(name: str) -> bool:
    """Independently of ``anchors``: is there a GPU the anchor's framework sees?"""
    if name == "fla_chunk_kda":
        return _importable("torch") and __import__("torch").cuda.is_available()
    import jax
    try:
        return bool(jax.devices("gpu"))
    except RuntimeError:
        return False


@pytest.mark.parametrize("name", anchors.ANCHORS)
def test_unavailable_here_is_one_line(name):
    reason = anchors.unavailable(name)
    if reason is None:
        assert _gpu_present(name), f"{name}: unavailable() is None but no GPU is visible"
    else:
        assert isinstance(reason, str) and reason.strip() and "\n" not in reason


def test_unavailable_names_the_missing_package(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda *a, **k: None)
    fla = anchors.unavailable("fla_chunk_kda")
    jla = anchors.unavailable("jla_kda")
    assert "torch not installed" in fla and "fetch_wheels.sh" in fla
    assert "jax-linear-attention" in jla and "fetch_wheels.sh" in jla


def test_unavailable_never_raises(monkeypatch):
    """Packages that seem installed but fail to import give a reason, not an exception."""
    for name in anchors.ANCHORS:     # first the real imports (torch where installed, jax's
        anchors.unavailable(name)    # backends), so that the patches below reach only anchors
    monkeypatch.setattr(importlib.util, "find_spec", lambda *a, **k: object())

    def broken(module, *a, **k):
        raise ImportError(f"cannot import {module} (simulated)")

    monkeypatch.setattr(anchors.importlib, "import_module", broken)
    for name in anchors.ANCHORS:
        reason = anchors.unavailable(name)
        assert isinstance(reason, str) and reason.strip(), (name, reason)


def test_unknown_names_and_modes():
    with pytest.raises(ValueError, match="fla_chunk_kda.*jla_kda"):
        anchors.make_call("flash_kda", {}, "fwd")
    with pytest.raises(ValueError, match="fla_chunk_kda.*jla_kda"):
        anchors.check("flash_kda", {})
    with pytest.raises(ValueError, match="fwd_bwd"):
        anchors.make_call("jla_kda", {}, "bwd")
    assert "fla_chunk_kda" in anchors.unavailable("flash_kda")


@pytest.mark.parametrize("name", anchors.ANCHORS)
def test_make_call_without_the_anchor_says_why(name):
    reason = anchors.unavailable(name)
    if reason is None:
        pytest.skip(f"{name} can run here")
    arrays = inputs.draw(*SHAPE)
    with pytest.raises(RuntimeError, match="cannot run here"):
        anchors.make_call(name, arrays, "fwd")
    with pytest.raises(RuntimeError, match="cannot run here"):
        anchors.check(name, arrays)


def test_import_does_not_import_torch():
    code = ("import sys; import experiments.device_check.anchors as a; "
            "a.unavailable('jla_kda'); assert 'torch' not in sys.modules, 'torch imported'")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_max_rel_errors():
    ref = {key: np.array([1.0, -4.0, 2.0], np.float32) for key in anchors.CHECKED}
    got = {key: r.copy() for key, r in ref.items()}
    got["o"] = np.array([1.0, -4.0, 3.0], np.float32)        # off by 1, max|ref| = 4
    got["dg"] = np.array([1.0, np.nan, 2.0], np.float32)
    ref["dbeta"] = np.zeros(3, np.float32)                     # all-zero reference: absolute
    got["dbeta"] = np.array([0.0, 0.5, 0.0], np.float32)
    errs = anchors.max_rel_errors(got, ref)
    assert set(errs) == set(anchors.CHECKED) == {"o", "dq", "dk", "dv", "dg", "dbeta"}
    assert errs["o"] == pytest.approx(0.25)
    assert errs["dg"] == float("inf")
    assert errs["dbeta"] == pytest.approx(0.5)
    assert errs["dq"] == errs["dk"] == errs["dv"] == 0.0


def test_check_machinery_on_our_own_reference():
    """``jax_errors`` with our own token recurrence as the "anchor": tiny errors for o and
    every gradient, so a mix-up of outputs, gradients or their order would show."""
    from kernels.kda import kda
    import jax.numpy as jnp

    def output(q, k, v, g, beta):
        return kda(q, k, v, g, beta, implementation="reference")[0]

    errs = anchors.jax_errors(output, inputs.draw(*SHAPE), qkv_dtype=jnp.float32)
    assert max(errs.values()) < 1e-5, errs


# --- the argument mapping, against each anchor's own reference ------------------------------

def _fla_naive():
    try:
        return importlib.import_module("fla.ops.kda.naive")
    except Exception as e:          # torch, einops or triton missing (fla.ops imports triton)
        pytest.skip(f"FLA's KDA reference does not import here: {type(e).__name__}: {e}")


@pytest.mark.parametrize("form,shape", [("recurrent", SHAPE), ("chunk", (1, 64, 2, 32))])
def test_fla_convention(form, shape):
    """Our arrays, as the anchor passes them (same layout, natural-log g, post-sigmoid beta,
    normalised q and k, default scale), through FLA's pure-torch KDA references in float32:
    o and all five gradients agree with ``kernels.kda.kda`` to float32 rounding."""
    naive = _fla_naive()
    import torch

    if form == "recurrent":
        def output(q, k, v, g, beta):
            return naive.naive_recurrent_kda(q, k, v, g, beta)[0]
    else:
        def output(q, k, v, g, beta):
            return naive.naive_chunk_kda(q, k, v, g, beta, chunk_size=16)[0]

    errs = anchors.torch_errors(output, inputs.draw(*shape), device="cpu",
                                qkv_dtype=torch.float32, implementation="reference")
    # measured <= 5e-7; g read as log2, scale 1 or beta taken as logits give 0.16 to 4.7
    assert max(errs.values()) < 1e-5, errs


def test_fla_options_are_chunk_kda_parameters():
    import inspect
    try:
        from fla.ops.kda import chunk_kda
    except Exception as e:
        pytest.skip(f"fla.ops.kda does not import here: {type(e).__name__}: {e}")
    params = inspect.signature(chunk_kda).parameters
    assert set(anchors.FLA_OPTIONS) <= set(params), (anchors.FLA_OPTIONS, list(params))
    # The shared arguments keep the defaults the mapping relies on.
    assert params["scale"].default is None
    for flag in ("use_qk_l2norm_in_kernel", "use_gate_in_kernel", "use_beta_sigmoid_in_kernel"):
        assert params[flag].default is False and flag not in anchors.FLA_OPTIONS


def _jla(module: str):
    try:
        return importlib.import_module(module)
    except Exception as e:
        pytest.skip(f"{module} does not import here: {type(e).__name__}: {e}")


def test_jla_convention():
    """The same for jax-linear-attention's token-by-token reference (the convention its
    Mosaic GPU ``kda`` states it follows)."""
    reference = _jla("jla.ops.reference")
    import jax.numpy as jnp

    def output(q, k, v, g, beta):
        return reference.kda(q, k, v, g, beta)[0]

    errs = anchors.jax_errors(output, inputs.draw(*SHAPE), qkv_dtype=jnp.float32,
                              implementation="reference")
    assert max(errs.values()) < 1e-5, errs       # measured: 0 (the same float32 recurrence)


# bf16 inputs and bf16 intermediates in the kernels against our float32 xla path: measured
# 4.5e-3 (o), 3.4e-3 (dq), 3.8e-3 (dk), 7.4e-3 (dv), 3.7e-3 (dg), 6.1e-3 (dbeta) at this shape
# (and at most 5.7e-3 at T=200); a convention error (log base, scale, a missing beta) is O(1).
JLA_KERNEL_TOLERANCE = 2e-2


@pytest.mark.slow
def test_jla_kernels_interpreted():
    """jla's Mosaic GPU KDA kernels, forward and backward, in Pallas interpret mode on CPU,
    with the anchor's inputs (bf16 q, k, v; float32 g, beta) and default scale: the same
    function as ours within bf16 error (about a minute on 2 cores). The public entry point
    ``jla.ops.mosaic_gpu.kda.kda`` refuses to run without an sm_90 GPU; after its checks it
    calls ``chunked_vector_gate`` exactly as here (``scale=K**-0.5``, no l2norm)."""
    vgo = _jla("jla.ops.mosaic_gpu.vector_gate_ops")
    shape = (1, 80, 1, 128)          # H * K a multiple of 128; T padded to 128 inside

    def output(q, k, v, g, beta):
        return vgo.chunked_vector_gate(q, k, v, g, (beta,), scale=q.shape[-1] ** -0.5,
                                       initial_state=None, interpret=True)[0]

    errs = anchors.jax_errors(output, inputs.draw(*shape), jit=False)   # interpret: no jit
    assert max(errs.values()) < JLA_KERNEL_TOLERANCE, errs
