"""Data for moba_jax: a byte tokenizer and packed, resumable LM batches.

Public API::

    from moba_jax.data import ByteTokenizer, build_datasets, DataConfigError
    from moba_jax.data import default_data_config, write_array_record

- :class:`ByteTokenizer` (``tokenizer.py``): 259 ids, bytes + PAD/BOS/EOS.
- :func:`default_data_config` (``config.py``): the ``data`` ConfigDict and the
  meaning of each field (source kinds, split, limits, cache).
- :func:`build_datasets` (``pipeline.py``): corpus -> cached token streams
  (``cache.py``) -> packed rows (``packing.py``) -> train iterator / val
  batches of dicts with inputs, targets, loss_mask, segment_ids, positions.
- :func:`write_array_record` (``sources.py``): writes pre-tokenised documents
  for ``data.source='array_record'``.
"""
from moba_jax.data.config import DataConfigError, default_data_config
from moba_jax.data.pipeline import LMDatasets, build_datasets
from moba_jax.data.sources import write_array_record
from moba_jax.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, VOCAB_SIZE, ByteTokenizer

__all__ = [
    "BOS_ID", "EOS_ID", "PAD_ID", "VOCAB_SIZE", "ByteTokenizer", "DataConfigError",
    "LMDatasets", "build_datasets", "default_data_config", "write_array_record",
]
