"""What the MoBA kernels compute, for FLOP accounting (public; no arrays).

The sparse paths (``xla`` and the Pallas kernels) walk a static list of work items
(``dispatch.Geometry.num_items``), each a ``[rows_per_tile, block_size]`` score tile
and its ``PV`` product; the ``xla`` path pads the list to whole ``lax.scan`` steps.
:func:`scored_pairs_per_token` turns that into (query row, key) pairs per token, the
quantity the model's "compiled" FLOP count multiplies by ``4 * head_dim``.
"""
from __future__ import annotations

from kernels.moba.dispatch import Geometry
from kernels.moba.ops import BlockSizes
from kernels.moba.xla import items_per_step


def scored_pairs_per_token(seq_len: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                           block_size: int, top_k: int,
                           block_sizes: BlockSizes | None = None) -> float:
    """(query-head row, key) pairs the sparse paths score per token, summed over heads.

    Counts every tile the kernel walks, padding rows and skipped padding items
    included, for one sequence (the count per token does not depend on the batch).
    """
    rows = (block_sizes or BlockSizes()).block_rows
    geo = Geometry(1, seq_len, num_q_heads, num_kv_heads, head_dim, block_size, top_k, rows)
    per_step = items_per_step(geo, num_kv_heads)
    items = -(-geo.num_items // per_step) * per_step
    return num_kv_heads * items * geo.rows_per_tile * block_size / seq_len
