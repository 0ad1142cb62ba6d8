"""`build_datasets`: corpus -> cached token streams -> packed rows -> batches.

Typical use (what the trainer does)::

    ds = build_datasets(cfg.data, seq_len=256, global_batch=64, seed=0,
                        process_index=jax.process_index(),
                        process_count=jax.process_count())
    it = ds.train_iterator()            # infinite; it.get_state() / it.set_state(s)
    batch = next(it)                    # dict of numpy arrays [64 // process_count, 256]
    val = ds.val_batches(max_batches=8) # fixed list, same for every seed
    print(ds.stats["unigram_entropy_nats"])

Order of training rows: global batch ``s`` holds elements ``s*B .. s*B+B-1``
of the infinite sequence "epoch 0 permuted, epoch 1 permuted, ...", where
epoch ``e`` is a permutation of all train rows drawn from
``np.random.default_rng([seed, e])``. So the data order is a pure function of
``(corpus, seq_len, global_batch, seed)``, batch ``s`` can be computed
directly (:meth:`LMDatasets.batch_at`), and process ``p`` of ``P`` gets rows
``[p*B/P, (p+1)*B/P)`` of each global batch.
"""
from __future__ import annotations

import logging
import sys
import threading
import time

import grain
import numpy as np

from moba_jax.data import cache
from moba_jax.data import packing
from moba_jax.data.config import DataConfigError, resolve_data_config
from moba_jax.data.sources import SourceFiles, iter_documents, resolve_files
from moba_jax.data.tokenizer import PAD_ID, ByteTokenizer

Batch = dict[str, np.ndarray]


def _tokenize(cfg, found: SourceFiles) -> tuple[np.ndarray, np.ndarray, dict]:
    """Reads every document, splits by identity hash, builds both streams and their stats."""
    train_docs, val_docs = [], []
    for identity, ids in iter_documents(cfg, found):
        (val_docs if packing.is_validation(identity, cfg.val_fraction) else train_docs).append(ids)
    n_docs = len(train_docs) + len(val_docs)
    if n_docs == 0:
        raise DataConfigError(
            f"data.path={cfg.path!r} (data.source={cfg.source!r}) holds no non-empty documents; "
            f"point data.path/data.pattern at files with text")
    if not val_docs:
        raise DataConfigError(
            f"data.val_fraction={cfg.val_fraction} leaves the validation split empty "
            f"({n_docs} documents); raise data.val_fraction or use more documents (data.max_docs)")
    train = packing.build_stream(train_docs)
    val = packing.build_stream(val_docs)
    meta = dict(
        n_train_docs=len(train_docs),
        n_val_docs=len(val_docs),
        n_train_tokens=int(train.size),
        n_val_tokens=int(val.size),
        unigram_entropy_nats=packing.unigram_entropy_nats(train),
        source=found.describe(),
    )
    return train, val, meta


class _TrainBatches:
    """Sequence view for grain: item ``step`` is this process's slice of global batch ``step``."""

    def __init__(self, ds: "LMDatasets"):
        self._ds = ds

    def __len__(self) -> int:
        return sys.maxsize

    def __getitem__(self, step: int) -> Batch:
        return self._ds.batch_at(int(step))


class LMDatasets:
    """Packed train/val rows of one corpus plus the batching rules of one run.

    Attributes:
      tokenizer: the :class:`ByteTokenizer` the ids come from.
      seq_len, global_batch, local_batch, seed, process_index, process_count.
      train_rows, val_rows: uint16 ``[N, seq_len + 1]`` packed rows.
      stats: corpus statistics (see :func:`build_datasets`).
    """

    def __init__(self, train_stream: np.ndarray, val_stream: np.ndarray, meta: dict, *,
                 seq_len: int, global_batch: int, seed: int, process_index: int,
                 process_count: int):
        self.tokenizer = ByteTokenizer()
        self.seq_len, self.global_batch, self.seed = seq_len, global_batch, seed
        self.process_index, self.process_count = process_index, process_count
        self.local_batch = global_batch // process_count
        self.train_rows = packing.stream_to_rows(train_stream, seq_len)
        self.val_rows = packing.stream_to_rows(val_stream, seq_len)
        self.stats = dict(meta, n_train_sequences=len(self.train_rows),
                          n_val_sequences=len(self.val_rows))
        self._seed_key = int(seed) & (2**64 - 1)
        self._orders: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def steps_per_epoch(self) -> float:
        """Global batches per pass over the train rows."""
        return len(self.train_rows) / self.global_batch

    @property
    def num_val_batches(self) -> int:
        """Length of ``val_batches()``: the val rows in batches, the last one padded."""
        return -(-len(self.val_rows) // self.global_batch)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        with self._lock:
            order = self._orders.get(epoch)
            if order is None:
                rng = np.random.default_rng([self._seed_key, epoch])
                order = rng.permutation(len(self.train_rows))
                self._orders[epoch] = order
                for old in sorted(self._orders)[:-2]:  # keep the current and next epoch
                    del self._orders[old]
            return order

    def batch_at(self, step: int) -> Batch:
        """This process's local batch of global training batch `step` (0-based)."""
        n = len(self.train_rows)
        first = step * self.global_batch + self.process_index * self.local_batch
        elems = first + np.arange(self.local_batch, dtype=np.int64)
        epochs, within = np.divmod(elems, n)
        rows = np.empty(self.local_batch, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            rows[sel] = self._epoch_order(int(e))[within[sel]]
        return packing.batch_from_rows(self.train_rows[rows])

    def train_iterator(self) -> grain.DatasetIterator:
        """Infinite iterator over :meth:`batch_at` (0, 1, 2, ...), prefetching a few batches.

        ``get_state()`` returns a small JSON-serialisable dict (grain's, the
        index of the next batch); ``set_state(state)`` on a fresh iterator
        resumes exactly there.
        """
        ds = grain.MapDataset.source(_TrainBatches(self))
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))

    def val_batches(self, max_batches: int | None = None) -> list[Batch]:
        """Held-out rows in corpus order as local batches: the same for every seed.

        The last batch is filled up with all-PAD rows (loss_mask 0), so every
        batch has the training shape and ``sum(loss * mask) / sum(mask)`` over
        all batches is the exact validation loss.
        """
        n = self.num_val_batches if max_batches is None else min(max_batches, self.num_val_batches)
        width = self.seq_len + 1
        out = []
        for b in range(n):
            lo = b * self.global_batch + self.process_index * self.local_batch
            rows = self.val_rows[lo:lo + self.local_batch]
            if len(rows) < self.local_batch:
                fill = np.full((self.local_batch - len(rows), width), PAD_ID, self.val_rows.dtype)
                rows = np.concatenate([rows, fill])
            out.append(packing.batch_from_rows(rows))
        return out


def build_datasets(data_cfg, *, seq_len: int, global_batch: int, seed: int,
                   process_index: int = 0, process_count: int = 1) -> LMDatasets:
    """Builds (or loads from cache) the corpus of `data_cfg` and batches it.

    Args:
      data_cfg: a ConfigDict (or dict) with the fields of
        :func:`moba_jax.data.default_data_config`; missing fields take defaults.
      seq_len: tokens per example T (rows hold T + 1 tokens).
      global_batch: rows per training step over all processes.
      seed: picks the training order; the val batches do not depend on it.
      process_index, process_count: this process's slice of every global batch.

    Returns:
      :class:`LMDatasets`; its ``stats`` dict has n_train_docs, n_val_docs,
      n_train_tokens, n_val_tokens (stream lengths incl. BOS/EOS, excl. PAD),
      n_train_sequences, n_val_sequences (packed rows), unigram_entropy_nats,
      source (a description), cache_file and cache_hit.

    Raises:
      DataConfigError: a bad config or corpus (the message names field and fix).
    """
    cfg = resolve_data_config(data_cfg)
    if int(seq_len) < 1:
        raise DataConfigError(f"seq_len={seq_len} must be >= 1")
    if int(process_count) < 1 or not 0 <= int(process_index) < int(process_count):
        raise DataConfigError(
            f"process_index={process_index} must lie in [0, process_count={process_count})")
    if int(global_batch) < 1 or int(global_batch) % int(process_count):
        raise DataConfigError(
            f"global_batch={global_batch} is not a positive multiple of process_count="
            f"{process_count}; choose a global batch divisible by the number of processes")
    t0 = time.perf_counter()
    found = resolve_files(cfg)
    path = cache.cache_path(cfg, found.fingerprint())
    entry = cache.load(path)
    hit = entry is not None
    if not hit:
        entry = _tokenize(cfg, found)
        cache.save(path, *entry)
    train, val, meta = entry
    ds = LMDatasets(train, val, meta, seq_len=int(seq_len), global_batch=int(global_batch),
                    seed=int(seed), process_index=int(process_index),
                    process_count=int(process_count))
    ds.stats.update(cache_file=str(path), cache_hit=hit)
    n_train = ds.stats["n_train_sequences"]
    if n_train < global_batch:
        raise DataConfigError(
            f"the train split has {n_train} sequences of seq_len={seq_len}, fewer than one "
            f"global_batch={global_batch}; use more data (data.max_docs/data.max_doc_bytes), "
            f"a smaller seq_len or a smaller global_batch")
    logging.info("data: %s; %d train / %d val rows of %d tokens (%s cache, %.2fs)",
                 meta["source"], n_train, ds.stats["n_val_sequences"], seq_len,
                 "hit" if hit else "built", time.perf_counter() - t0)
    return ds
