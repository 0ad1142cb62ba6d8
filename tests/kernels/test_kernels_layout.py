"""The pieces shared by kernels/moba and kernels/kda: the interpret-mode rule, KDA's public
launch parameters and cost helper. Fast: nothing here compiles a kernel."""
from __future__ import annotations

import jax
import pytest

from kernels import interpret
from kernels.kda import BlockSizes, chunk_flops, kda, num_segments
from kernels.kda import cost as kda_cost
from tests.kernels.kda_helpers import make_inputs


@pytest.mark.parametrize("given,platform,backend,want", [
    (None, "tpu", "cpu", True), (None, "gpu", "cpu", True),
    (None, "tpu", "tpu", False), (None, "gpu", "gpu", False),
    (None, "tpu", "gpu", True), (None, "gpu", "tpu", True),
    (True, "gpu", "gpu", True), (False, "gpu", "cpu", False), (False, "tpu", "tpu", False),
])
def test_interpret_rule(given, platform, backend, want):
    """Explicit wins; None interprets exactly where the kernel's platform is absent."""
    assert interpret.resolve_interpret(given, platform=platform, backend=backend) is want


def test_interpret_rule_rejects_unknown_platform():
    with pytest.raises(ValueError, match="platform='cuda' must be one of"):
        interpret.resolve_interpret(None, platform="cuda")


def test_interpret_message_and_platform_check():
    assert (interpret.interpret_message("kda(implementation='pallas')", backend="cpu")
            == "kda(implementation='pallas'): CPU backend, running kernels with interpret=True.")
    interpret.require_platform("gpu", what="x", backend="gpu")
    with pytest.raises(ValueError, match="x needs a tpu backend but this one is 'cpu'; pass "
                                         "interpret=True"):
        interpret.require_platform("tpu", what="x", backend="cpu")


def test_kda_compiled_pallas_without_its_hardware_is_an_error():
    if jax.default_backend() in ("gpu", "tpu"):
        pytest.skip("needs a backend without the kernels' hardware")
    args, _ = make_inputs(B=1, T=16, H=1, K=16, V=16)
    with pytest.raises(ValueError, match="pass interpret=True"):
        kda(*args[:5], implementation="pallas", interpret=False)


def test_kda_block_sizes():
    assert BlockSizes.get_default() == BlockSizes(block_k=16, block_v=16, num_warps=8,
                                                  state_num_warps=4, num_stages=1)
    for name, bad in (("block_k", 8), ("block_v", 48), ("block_v", 512)):
        with pytest.raises(ValueError, match=f"BlockSizes.{name}={bad} must be a power of "
                                             r"two in \[16, 256\]"):
            BlockSizes(**{name: bad})
    with pytest.raises(ValueError, match="BlockSizes.num_warps=6 must be a power of two"):
        BlockSizes(num_warps=6)
    with pytest.raises(ValueError, match="BlockSizes.num_stages=0"):
        BlockSizes(num_stages=0)


def test_kda_cost_helpers():
    # Same numbers as the accounting's compiled-FLOP model of the chunked forward.
    assert chunk_flops(64, 128) == {"parallel": 8861632.0, "scan": 4235264.0}
    assert chunk_flops(16, 16) == {"parallel": 70128.0, "scan": 17152.0}
    assert kda_cost.SUB_CHUNK == 16
    assert num_segments(64, 8 * kda_cost.SEGMENT_BYTES) == 8
