"""What the MoBA kernels compute, for FLOP accounting (public; no arrays).

The sparse paths (``xla`` and the Pallas kernels) walk a static list of work items
(``dispatch.Geometry.num_items``), each a ``[rows_per_tile, block_size]`` score tile
and its ``PV`` product; the ``xla`` path pads the list to whole ``lax.scan`` steps.
:func:`scored_pairs_per_token` turns that into (query row, key) pairs per token, the
quantity the model's "compiled" FLOP count multiplies by ``4 * head_dim``, and
:func:`elementwise_per_token` the element-wise work around those products, forward and
backward, as XLA's cost analysis counts it (one FLOP per element of each element-wise
operation, ``n - 1`` per reduction over ``n``).

The GPU (Triton) kernels skip, inside an item of a row's current block, the key chunks
that lie after the item's last token (they are masked for every row), and the ``dk``/``dv``
kernel the rows before a key chunk; for them these counts are an upper bound (at block
512 with 64-key chunks and 128-row tiles, about 3/8 of the current block's forward
chunks are skipped, i.e. an eighth of all scored pairs at top-3).
"""
from __future__ import annotations

from kernels.moba import blocked
from kernels.moba.dispatch import Geometry
from kernels.moba.ops import BlockSizes
from kernels.moba.selection import num_blocks
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


# Index arithmetic of the dispatch plan per (row, slot) pair: the sort's inverse, the
# block runs' searchsorted bounds, the tiles' row ranges, the gathers' bounds checks and
# the merge of a row's slots (integer and compare operations; measured on XLA:CPU).
PLAN_OPS_PER_PAIR = 75.0


def elementwise_per_token(seq_len: int, num_q_heads: int, num_kv_heads: int, head_dim: int,
                          block_size: int, top_k: int, implementation: str = "xla",
                          block_sizes: BlockSizes | None = None) -> tuple[float, float]:
    """Element-wise FLOPs per token of one MoBA call: ``(forward, backward)``.

    Sparse paths (``xla``, Pallas), with ``S`` the scored (row, key) pairs of the work
    items (:func:`scored_pairs_per_token`), ``O = S D / Bs`` their output elements,
    ``W`` their rows and ``P = Hq top_k`` the (row, slot) pairs per token:

    - forward: per score the scale, the causal-and-row mask (2), the select, the row
      max, ``s - m`` and the row sum (7 S); per output element the division by the row
      sum, its select and the scatter-add into sorted rows (3 O); per item row the max's
      and sum's guards, ``lse`` and its scatter (12 W); the merge of a row's slots
      weighted in log-sum-exp space (``P D``); the plan's index arithmetic
      (:data:`PLAN_OPS_PER_PAIR` per pair); the gate's mask over the past blocks
      (``Hq N``; the gate's product and the key pooling are the caller's routing term);
    - backward: the recomputed masked scores (4 S), ``P = exp(S - lse)`` selected (2 S),
      ``dS = P (dP - delta) scale`` (3 S); the scatter-adds of ``dq`` (O) and of
      ``dk``, ``dv`` into key blocks (``2 O Bs / G``); the sum of a row's slots for
      ``dq`` (``5/3 P D``: select and reduce); ``delta = rowsum(dO O)`` (``2 Hq D``).
      Routing has no backward.

    ``"blocked"`` (``blocked.py``), with ``S`` its scored pairs
    (:func:`kernels.moba.blocked.scored_pairs_per_token`) and ``O = S D / Bs``: forward,
    the tiles' softmax (the current tiles' mask, max, ``s - m``, scale, sum: 5 S; the
    division by the sum, O), the merge of the past pairs into each row (gathers' and
    log-sum-exp weights: ``3 Hq (top_k - 1) D + Hq D``), the plan (about 30 per pair) and
    the gate's mask (``Hq N``); backward, FlashAttention's per tile (scale, ``s - lse``,
    the current tiles' mask, ``dP - delta``, two products: 6 S), the tiles' ``dk``,
    ``dv`` added into their blocks (2 O), the past pairs' ``dq`` summed into their rows
    (``2 Hq (top_k - 1) D``) and ``delta`` (``2 Hq D``).

    ``"reference"``: dense masked softmax over all ``T`` keys (scale, the block mask's
    ``and``, its additive bias, max, subtract, sum, normalise: 7 per (head, key) pair)
    and the rank test of the block choice (about 6 compares and logic per (head, block,
    block)); its autodiff backward is that of a dense softmax (14 per pair).
    """
    hq, hkv, d, bs = num_q_heads, num_kv_heads, head_dim, block_size
    n = num_blocks(seq_len, bs)
    if implementation == "reference":
        scored = hq * seq_len
        return 7.0 * scored + 6.0 * hq * n * n + 3.0 * hq * n, 14.0 * scored
    if implementation == "blocked":
        s = blocked.scored_pairs_per_token(seq_len, hq, hkv, bs, top_k)
        o, past = s * d / bs, hq * (top_k - 1) * d
        fwd = 5.0 * s + o + 3.0 * past + hq * d + 30.0 * hq * top_k + hq * n
        return fwd, 6.0 * s + 2.0 * o + 2.0 * past + 2.0 * hq * d
    rows = (block_sizes or BlockSizes()).block_rows
    s = scored_pairs_per_token(seq_len, hq, hkv, d, bs, top_k, block_sizes)
    o, w, pairs = s * d / bs, s / bs, hq * top_k
    fwd = 7.0 * s + 3.0 * o + 12.0 * w + pairs * d + PLAN_OPS_PER_PAIR * pairs + hq * n
    bwd = 9.0 * s + o + 2.0 * o * bs / rows + 5.0 / 3.0 * pairs * d + 2.0 * hq * d
    return fwd, bwd
