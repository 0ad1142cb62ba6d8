"""Kimi Delta Attention (KDA): gated delta-rule linear attention (``shared/design/kda.md``).

Re-exports only; the op and its implementation table are in ``ops.py``, the token
recurrence in ``reference.py``, the chunked XLA path in ``chunked*.py``, the Pallas path
in ``pallas*.py`` and the FLOP model of the chunked forward in ``cost.py``.
"""
from kernels.kda.cost import chunk_flops, num_segments
from kernels.kda.ops import IMPLEMENTATIONS, BlockSizes, kda, kda_chunked, l2_normalize
from kernels.kda.reference import kda_reference

__all__ = ["BlockSizes", "IMPLEMENTATIONS", "chunk_flops", "kda", "kda_chunked",
           "kda_reference", "l2_normalize", "num_segments"]
