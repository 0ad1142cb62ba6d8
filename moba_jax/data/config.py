"""The data config (`default_data_config`) and the error bad data configs raise.

Fields of the ``data`` ConfigDict (override any of them on the command line,
e.g. ``--config.data.source=jsonl --config.data.path=/data/web.jsonl``):

- ``source``: where documents come from:
    * ``"stdlib"`` (default): the ``*.py`` files of the running interpreter's
      standard library, test suites included (~1.8k files, ~31 MB on CPython
      3.11), read in sorted path order. Present on every machine, no download.
    * ``"text_dir"``: every file under the folder ``path`` matching ``pattern``
      (one file = one document; hidden files/folders are skipped).
    * ``"jsonl"``: a ``.jsonl`` file, a glob of them, or a folder searched for
      ``**/*.jsonl``; one line = one document, its text under ``text_field``.
    * ``"array_record"``: an ArrayRecord file, glob or folder
      (``**/*.array_record*``) of pre-tokenised documents, one record each,
      written by :func:`moba_jax.data.write_array_record` (record = the
      document's byte ids ``[0, 256)`` as little-endian int32, no BOS/EOS).
- ``path``: see above; ignored (leave ``""``) for ``stdlib``.
- ``pattern``: glob for ``text_dir`` relative to ``path`` (default ``"**/*"``).
- ``text_field``: JSON key of the text for ``jsonl`` (default ``"text"``).
- ``val_fraction``: share of *documents* held out for validation. A document
  is held out iff a hash of its identity (relative path, plus line/record
  number for jsonl/array_record) falls below it, so the split does not move
  when files are added, removed or reordered.
- ``max_docs``: keep only the first N non-empty documents in sorted order (0: all).
- ``max_doc_bytes``: truncate every document to N bytes/tokens (0: no limit).
- ``cache_dir``: where token streams are cached ("" -> ``$MOBA_JAX_CACHE`` or
  ``~/.cache/moba_jax``).
"""
from __future__ import annotations

import ml_collections

SOURCES = ("stdlib", "text_dir", "jsonl", "array_record")


class DataConfigError(ValueError):
    """A data config or corpus the pipeline cannot use; the message names the field and the fix."""


def default_data_config() -> ml_collections.ConfigDict:
    """The defaults documented in this module's docstring."""
    return ml_collections.ConfigDict(dict(
        source="stdlib",
        path="",
        pattern="**/*",
        text_field="text",
        val_fraction=0.05,
        max_docs=0,
        max_doc_bytes=0,
        cache_dir="",
    ))


def resolve_data_config(cfg) -> ml_collections.ConfigDict:
    """Returns a full, checked copy of `cfg`: missing fields take their defaults.

    Raises:
      DataConfigError: unknown source, missing path, or out-of-range numbers.
    """
    out = default_data_config()
    given = dict(cfg) if cfg is not None else {}
    unknown = sorted(set(given) - set(out))
    if unknown:
        raise DataConfigError(
            f"data config has unknown field(s) {unknown}; known fields are {sorted(out)}")
    out.update(given)
    if out.source not in SOURCES:
        raise DataConfigError(
            f"data.source={out.source!r} is unknown; set data.source to one of {', '.join(SOURCES)}")
    if out.source != "stdlib" and not str(out.path).strip():
        raise DataConfigError(
            f"data.path is empty but data.source={out.source!r} reads files; set data.path "
            f"(e.g. --config.data.path=/data/corpus) or use data.source='stdlib'")
    if not 0.0 < float(out.val_fraction) < 1.0:
        raise DataConfigError(
            f"data.val_fraction={out.val_fraction} must lie strictly between 0 and 1 (e.g. 0.05)")
    for field in ("max_docs", "max_doc_bytes"):
        if int(out[field]) < 0:
            raise DataConfigError(f"data.{field}={out[field]} must be >= 0 (0 means no limit)")
    return out
