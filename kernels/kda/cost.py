"""What the chunked KDA path (``implementation="xla"``) computes, in FLOPs and segments.

``chunk_flops(chunk, head_dim)`` counts the forward of one chunk and head as the code
computes it, phase by phase (``chunked_fwd.py`` with the algebra of
``chunked_decay.py``), and ``chunk_backward_flops`` its backward (``chunked_bwd.py``);
they are the "compiled" FLOP convention of the accounting, checked against XLA's cost
analysis in ``tests/test_flops*.py``. ``num_segments`` (from
``chunked.py``) says in how many segments, each with its own scan over chunks, a long
input runs; XLA's cost analysis counts a scan body once per segment, whatever its trip
count.
"""
from __future__ import annotations

from kernels.kda.chunked import MAX_SEGMENTS, SEGMENT_BYTES, num_segments
from kernels.kda.chunked_decay import SUB_CHUNK

__all__ = ["MAX_SEGMENTS", "SEGMENT_BYTES", "SUB_CHUNK", "chunk_backward_flops", "chunk_flops",
           "num_segments"]


def chunk_flops(chunk: int, head_dim: int, sub_chunk: int = SUB_CHUNK) -> dict[str, float]:
    """FLOPs of one chunk and head of ``kernels.kda.chunked.kda_chunked``'s forward
    (K = V = ``head_dim``, C = ``chunk``) on its usual branch, where each chunk's decayed
    score matrices are one factorised product (leaf = the whole chunk,
    ``chunked_decay.leaf_index``; the branches for strong decays compute less, and XLA's
    cost analysis also counts a conditional as its largest branch):

    - ``parallel``: everything batched over chunks (``chunked_fwd.chunk_inputs``,
      ``intra_forward`` and the output of ``core_fwd``): the q scaling, the in-chunk
      cumulative sum of g (a product with a ``C x C`` triangle of ones, ``2 C^2 K``),
      both score matrices (``4 C^2 K``) with their factors and masks, the blocked
      inverse ``Tinv = (I + beta Akk)^-1`` (``chunked_decay.unit_lower_inverse``:
      ``sub_chunk`` x ``sub_chunk`` diagonal blocks by row updates, then block rows),
      ``W`` and ``U`` (``4 C^2 K``) and the output ``(e^G q) S + Aqk Vn``;
    - ``scan``: one step of the sequential scan over chunks
      (``chunked_fwd.state_forward``: ``W S`` and ``Kg^T Vn`` and the element-wise
      updates). XLA counts a loop body once, whatever its trip count.
    """
    c, k, s = chunk, head_dim, sub_chunk
    ns = c // s
    scores = 4 * c * c * k + 6 * c * k + 2 * c * c
    inverse = ((s - 1) * ns * (2 * s * s + s)
               + sum(2 * s * (a * s) * c + 2 * s * s * c + s * c for a in range(1, ns)))
    intra = c * c + 4 * c * c * k + 4 * c * k         # beta Akk; W, U; their right sides
    decays = 4 * c * k                                  # G_last - G, e^G q, e^.. k
    output = 2 * c * k * k + 2 * c * c * k + c * k
    parallel = k * c + 2 * c * c * k + scores + inverse + intra + decays + output
    scan = 4 * c * k * k + c * k + 2 * k * k
    return {"parallel": float(parallel), "scan": float(scan)}


def chunk_backward_flops(chunk: int, head_dim: int) -> dict[str, float]:
    """FLOPs of the backward (``chunked_bwd.core_bwd``) of one chunk and head, on the
    usual branch (leaf = the whole chunk), K = V = ``head_dim``, C = ``chunk``:

    - ``parallel``: the products batched over chunks: the recomputed in-chunk cumulative
      sum of g and the reverse one for ``dg`` (``2 C^2 K`` each); ``dAqk = dO Vn^T``;
      ``dO h^T`` and ``dVn h^T`` (``2 C K^2`` each); ``dTinv`` (two products);
      ``Tinv^T dU``, ``Tinv^T dW``; ``dA = -Tinv^T dTinv Tinv^T`` (two ``C^3``
      products); the cotangents of both decayed score matrices (four products,
      ``chunked_decay.decayed_row_col``); plus the element-wise work as XLA compiles it,
      ``75 C K + 10 C^2`` (measured: the masks, the decay factors and the gradient sums,
      several recomputed in their consumers' fusions; the code's own element-wise
      operations are about ``49 C K + 8 C^2``);
    - ``scan``: one step of the reverse scan over chunks (``dVn``, ``dKg``, ``d decay``,
      the state gradient: ``2 C^2 K + 8 C K^2`` and ``3 C K + 5 K^2`` element-wise).
      XLA counts a loop body once, whatever its trip count.
    """
    c, k = chunk, head_dim
    parallel = 22 * c * c * k + 4 * c * k * k + 4 * c ** 3 + 75 * c * k + 10 * c * c
    scan = 2 * c * c * k + 8 * c * k * k + 3 * c * k + 5 * k * k
    return {"parallel": float(parallel), "scan": float(scan)}
