"""On-disk cache of tokenised token streams, shared by every run on a machine.

A cache entry is one ``.npz`` file holding the train and val streams (uint16,
see :mod:`moba_jax.data.packing`) and a JSON metadata blob (document/token
counts, unigram entropy, source description). Its name is a hash of
everything that changes the streams: source, path, pattern, text field,
val_fraction, max_docs, max_doc_bytes, and the sorted file list with sizes
and mtimes. `seq_len` is not part of it: rows are cut from the stream at load
time, so runs with different sequence lengths share one entry.

Writers write a temporary file in the same folder and `os.replace` it into
place, so concurrent runs never see a half-written entry (the last writer
wins; all write the same bytes). An unreadable entry is rebuilt.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import tempfile

import numpy as np

CACHE_VERSION = 1  # bump when the stream format or the split rule changes

_KEY_FIELDS = ("source", "path", "pattern", "text_field", "val_fraction", "max_docs",
               "max_doc_bytes")


def cache_root(cfg) -> pathlib.Path:
    """``cfg.cache_dir``, else ``$MOBA_JAX_CACHE``, else ``~/.cache/moba_jax``."""
    root = cfg.cache_dir or os.environ.get("MOBA_JAX_CACHE") or "~/.cache/moba_jax"
    return pathlib.Path(root).expanduser()


def cache_path(cfg, fingerprint: list) -> pathlib.Path:
    """The entry for a resolved data config whose files have `fingerprint`."""
    key = {f: cfg[f] for f in _KEY_FIELDS}
    key["path"] = os.path.abspath(os.path.expanduser(cfg.path)) if cfg.path else ""
    key["version"] = CACHE_VERSION
    key["files"] = fingerprint
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return cache_root(cfg) / "data" / f"{cfg.source}-{digest}.npz"


def load(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray, dict] | None:
    """``(train_stream, val_stream, meta)`` of an entry, or None if absent/unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            train, val = z["train"], z["val"]
            meta = json.loads(z["meta"].tobytes().decode("utf-8"))
        return train, val, meta
    except Exception as e:  # truncated or foreign file: rebuild it
        logging.warning("data cache entry %s is unreadable (%s); rebuilding it", path, e)
        return None


def save(path: pathlib.Path, train: np.ndarray, val: np.ndarray, meta: dict) -> None:
    """Writes an entry atomically; a cache folder that cannot be written only logs a warning."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, train=train, val=val,
                         meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8))
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; let other users share the cache
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError as e:
        logging.warning("could not write data cache entry %s (%s); continuing without it", path, e)
