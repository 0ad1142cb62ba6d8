"""Train/val split, packing documents into rows, and the per-batch features.

Packing ("greedy concatenation"): each split is one token stream
``[BOS] doc_1 [EOS] [BOS] doc_2 [EOS] ...`` in corpus order, cut into
consecutive rows of ``seq_len + 1`` tokens; a document that does not fit in
the rest of a row continues at the start of the next row, and only the last
row of a split is padded (PAD). No token is wasted on padding, and the stream
does not depend on `seq_len`, so one cached stream serves every `seq_len`.

From a row ``r`` of ``T + 1`` tokens, :func:`batch_from_rows` makes

- ``inputs = r[:-1]``, ``targets = r[1:]``                  (int32 [B, T])
- ``loss_mask = targets != PAD``                            (float32 [B, T])
- ``segment_ids``: 1, 2, ... per document piece in the row, +1 at every BOS,
  0 on PAD                                                  (int32 [B, T])
- ``positions``: 0 at every BOS, counting up inside the document; a document
  continued from the previous row restarts at 0 at the row start, so
  positions always lie in ``[0, T)``; 0 on PAD             (int32 [B, T])

The restart at row starts means `positions` is the offset within the part of
the document visible in this row (a rotary model cannot tell the difference,
and position tables of size T stay in range).
"""
from __future__ import annotations

import hashlib
from typing import Iterable

import numpy as np

from moba_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID


def is_validation(identity: str, val_fraction: float) -> bool:
    """Whether the document named `identity` belongs to the validation split.

    A pure function of the name: sha256 of it, read as a number in [0, 1).
    """
    digest = hashlib.sha256(identity.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") / 2.0**64 < val_fraction


def build_stream(docs: Iterable[np.ndarray]) -> np.ndarray:
    """Concatenates documents as ``[BOS] ids [EOS]`` into one uint16 stream."""
    docs = list(docs)
    total = sum(len(d) + 2 for d in docs)
    stream = np.empty(total, dtype=np.uint16)
    off = 0
    for d in docs:
        n = len(d)
        stream[off] = BOS_ID
        stream[off + 1:off + 1 + n] = d
        stream[off + 1 + n] = EOS_ID
        off += n + 2
    return stream


def stream_to_rows(stream: np.ndarray, seq_len: int) -> np.ndarray:
    """Cuts a stream into rows ``[N, seq_len + 1]``, padding the last one with PAD."""
    width = seq_len + 1
    n_rows = -(-len(stream) // width)
    rows = np.full(n_rows * width, PAD_ID, dtype=stream.dtype)
    rows[:len(stream)] = stream
    return rows.reshape(n_rows, width)


def batch_from_rows(rows_BL: np.ndarray) -> dict[str, np.ndarray]:
    """The model's batch dict for packed rows ``[B, T + 1]`` (see module docstring)."""
    rows = rows_BL.astype(np.int32)
    inputs, targets = rows[:, :-1], rows[:, 1:]
    is_pad = inputs == PAD_ID
    is_bos = inputs == BOS_ID
    # A row that starts inside a document (no BOS at column 0) opens segment 1 there.
    segment_ids = np.cumsum(is_bos, axis=1, dtype=np.int32) + (~is_bos[:, :1]).astype(np.int32)
    segment_ids[is_pad] = 0
    cols = np.arange(inputs.shape[1], dtype=np.int32)
    last_start = np.maximum.accumulate(np.where(is_bos, cols, 0), axis=1)
    positions = cols - last_start
    positions[is_pad] = 0
    return {
        "inputs": inputs,
        "targets": targets,
        "loss_mask": (targets != PAD_ID).astype(np.float32),
        "segment_ids": segment_ids,
        "positions": positions,
    }


def unigram_entropy_nats(stream: np.ndarray) -> float:
    """Entropy of the byte-unigram distribution of `stream` (specials excluded), nats/token.

    A model that ignores context entirely reaches this loss on byte tokens;
    it is the baseline every trained model should beat.
    """
    counts = np.bincount(stream, minlength=256)[:256].astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())
