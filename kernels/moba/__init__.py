"""MoBA: Mixture of Block Attention (causal), as a JAX op with three implementations.

Usage::

    from kernels.moba import moba_attention
    out = moba_attention(q, k, v, block_size=512, top_k=3)          # "xla" path
    out = moba_attention(q, k, v, block_size=512, top_k=3, implementation="pallas")

Semantics (``shared/design/moba.md``; all implementations agree exactly)
-----------------------------------------------------------------------
``q [B, T, Hq, D]``, ``k, v [B, T, Hkv, D]``; query head ``h`` reads kv head
``h // (Hq // Hkv)`` (K/V are never repeated in memory).  Keys are cut into
blocks of ``block_size`` (the last may be partial); token ``t``'s *current*
block is ``t // block_size``.  Each block's pooled key ``kbar_i`` is the float32
mean of its actual keys.  For every (token, query head) the gate
``<q_t, kbar_i>`` (unscaled) ranks the *past* blocks ``i < t // block_size``; the
``top_k - 1`` best (ties: lower index) join the current block.  Attention is one
softmax over {current-block keys ``j <= t``} + {all keys of the chosen past
blocks}.  Routing is not differentiated: q, k, v get gradients through the
attention only.  ``top_k = 1`` is current-block-only attention; with
``T <= top_k * block_size`` MoBA is full causal attention.

Implementations (``implementation=``)
-------------------------------------
* ``"reference"``: dense ``[T, T]`` scores plus an additive mask; the oracle.
* ``"xla"``: exact, any backend, cost ``~ T * top_k * block_size * D``.
* ``"blocked"``: exact, any backend, same cost order; the current block as one dense
  causal tile per block and the chosen past blocks as unmasked tiles of one key block
  each (``blocked.py``). No scatter in the forward and no per-item masks: the fast
  path on CPU.
* ``"pallas"``: the Pallas kernel for the current backend (``"pallas_tpu"`` on
  TPU, ``"pallas_gpu"`` otherwise); on a backend without that hardware the
  kernel runs in interpret mode (logged once).  ``interpret=False`` there is an
  error.  ``"pallas_tpu"`` / ``"pallas_gpu"`` pick a variant explicitly.

Design of the sparse paths (``xla`` and both Pallas variants)
-------------------------------------------------------------
Selection is per token, and neighbouring tokens usually pick different past
blocks, so grouping by query tile would visit (and mask) up to every block.
We group by *key block* instead, like an MoE dispatch (``dispatch.py``):

1. ``selection.select_slots`` gives every (token, query head) ``top_k`` slots:
   the current block, then the chosen past blocks (``-1`` where a token has too
   few past blocks).
2. For each (batch, kv head), the (row = token x query head of the group, slot)
   pairs are stably sorted by block and cut into tiles of ``G =
   BlockSizes.block_rows`` rows.  A *work item* is a (tile, block) pair whose rows
   overlap; there are at most ``#tiles + #blocks`` and they are listed
   block-major, so tile and block indices are both non-decreasing.
3. Per item, the kernel computes one dense ``[G, D] x [D, block_size]`` score
   tile, masks rows outside the item and keys after the row's token (only
   possible in the current block), and produces each sorted pair's
   block-local softmax ``o`` and ``lse`` (float32).  Every pair is valid in
   exactly one item.
4. A row's ``top_k`` pairs are merged in log-sum-exp space (``merge_pairs``).
5. Backward (one ``custom_vjp`` shared by all sparse paths) recomputes scores
   per item with ``P = exp(S - lse)`` using the saved final per-row ``lse`` and
   ``delta = rowsum(dO * O)``; ``dq`` is summed over a row's pairs, ``dk``/``dv``
   accumulate per block.

Kernels: ``xla.py`` runs items in chunks under ``lax.scan`` with scatter-adds.
``pallas_tpu.py`` (Mosaic) has grid ``(B*Hkv, items)`` and scalar-prefetches the
item tables into SMEM; the BlockSpec index maps read them, so only selected key
blocks are DMA'd, and the monotone tile/block order lets outputs accumulate in
VMEM across consecutive steps.  ``pallas_gpu.py`` (Triton) runs one program per
tile (forward, ``dq``) looping over its items with an online softmax over
``block_k`` key chunks, and one program per key-block chunk for ``dk``/``dv``,
looping over the tiles of that block's run; index tables are loaded from refs.
Total work is ``(T * Hq * top_k + B * Hkv * #blocks * G) * block_size * D``,
i.e. linear in ``T``.
"""
from kernels.moba.ops import (IMPLEMENTATIONS, BlockSizes, moba_attention,
                              moba_select_blocks, unsupported_reason)
from kernels.moba.reference import moba_attention_reference
from kernels.moba.cost import scored_pairs_per_token

__all__ = ["BlockSizes", "IMPLEMENTATIONS", "moba_attention", "moba_attention_reference",
           "moba_select_blocks", "scored_pairs_per_token", "unsupported_reason"]
