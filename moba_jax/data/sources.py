"""Finding and reading the documents of each data source.

Two steps, so that a cache lookup needs only the cheap first one:

1. :func:`resolve_files` lists the files a config points at (sorted, with
   sizes and modification times: :meth:`SourceFiles.fingerprint`);
2. :func:`iter_documents` reads them and yields ``(identity, ids)`` per
   document: `identity` is a stable name (relative path, ``path:line`` for
   JSONL, ``path:record`` for ArrayRecord) used to assign the train/val split,
   `ids` are the document's byte ids (uint8 for text, int32 for ArrayRecord),
   without BOS/EOS. Empty documents are skipped.

See :mod:`moba_jax.data.config` for what each source reads.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
import pathlib
import sys
import sysconfig
from typing import Iterator, Sequence

import numpy as np
from array_record.python import array_record_module

from moba_jax import jsonfiles
from moba_jax.data.config import DataConfigError

_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})


@dataclasses.dataclass(frozen=True)
class SourceFiles:
    """The sorted files of a source; `root` is what identities are relative to."""
    source: str
    root: str
    files: tuple[str, ...]

    def relpath(self, file: str) -> str:
        return pathlib.Path(os.path.relpath(file, self.root)).as_posix()

    def fingerprint(self) -> list[tuple[str, int, int]]:
        """``(relative path, size, mtime_ns)`` of every file: changes when the corpus does."""
        out = []
        for f in self.files:
            st = os.stat(f)
            out.append((self.relpath(f), st.st_size, st.st_mtime_ns))
        return out

    def describe(self) -> str:
        if self.source == "stdlib":
            return (f"stdlib: {len(self.files)} *.py files of Python "
                    f"{sys.version.split()[0]} under {self.root}")
        return f"{self.source}: {len(self.files)} file(s) under {self.root}"


def _hidden(rel: pathlib.PurePath) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def _stdlib_files() -> SourceFiles:
    root = sysconfig.get_paths()["stdlib"]
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(".")]
        files.extend(os.path.join(dirpath, f) for f in filenames if f.endswith(".py"))
    return SourceFiles("stdlib", root, tuple(files))


def _text_dir_files(path: str, pattern: str) -> SourceFiles:
    root = pathlib.Path(path).expanduser().absolute()
    if not root.is_dir():
        raise DataConfigError(
            f"data.path={path!r} is not a folder; data.source='text_dir' needs a folder of "
            f"text files (or use data.source='jsonl'/'array_record' for single files)")
    files = [str(p) for p in root.glob(pattern)
             if p.is_file() and not _hidden(p.relative_to(root))]
    return SourceFiles("text_dir", str(root), tuple(files))


def _glob_files(source: str, path: str, folder_glob: str) -> SourceFiles:
    """A single file, a glob (``**`` allowed) or a folder searched with `folder_glob`."""
    p = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(p):
        root, files = p, glob.glob(os.path.join(p, folder_glob), recursive=True)
    elif any(c in p for c in "*?["):
        files = glob.glob(p, recursive=True)
        root = os.path.commonpath([os.path.dirname(f) for f in files]) if files else ""
    else:
        root, files = os.path.dirname(p), [p] if os.path.isfile(p) else []
    return SourceFiles(source, root, tuple(f for f in files if os.path.isfile(f)))


def resolve_files(cfg) -> SourceFiles:
    """Lists the files of a resolved data config, sorted by relative path.

    Raises:
      DataConfigError: when the path matches no files.
    """
    if cfg.source == "stdlib":
        found = _stdlib_files()
    elif cfg.source == "text_dir":
        found = _text_dir_files(cfg.path, cfg.pattern)
    elif cfg.source == "jsonl":
        found = _glob_files("jsonl", cfg.path, "**/*.jsonl")
    else:
        found = _glob_files("array_record", cfg.path, "**/*.array_record*")
    if not found.files:
        hint = (f" with data.pattern={cfg.pattern!r}" if cfg.source == "text_dir" else "")
        raise DataConfigError(
            f"data.path={cfg.path!r}{hint} matches no files for data.source={cfg.source!r}; "
            f"point data.path at existing file(s) or fix the glob")
    files = sorted(found.files, key=found.relpath)
    return dataclasses.replace(found, files=tuple(files))


def _read_jsonl(path: str, rel: str, text_field: str) -> Iterator[tuple[str, bytes]]:
    with open(path, "rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataConfigError(
                    f"data.path: {jsonfiles.describe(path, e, lineno)}; every non-empty line "
                    "of a jsonl file must be one JSON object, fix or remove that line") from None
            if not isinstance(obj, dict) or text_field not in obj:
                raise DataConfigError(
                    f"data.text_field={text_field!r} is missing in {rel} line {lineno}; set "
                    f"data.text_field to the JSON key that holds the document text")
            text = obj[text_field]
            if not isinstance(text, str):
                raise DataConfigError(
                    f"data.text_field={text_field!r} in {rel} line {lineno} is a "
                    f"{type(text).__name__}, not a string; point data.text_field at the text")
            yield f"{rel}:{lineno}", text.encode("utf-8")


def _read_array_record(path: str, rel: str) -> Iterator[tuple[str, np.ndarray]]:
    fix = "write it with moba_jax.data.write_array_record (int32 byte ids per record)"
    try:
        reader = array_record_module.ArrayRecordReader(path)
        ok = reader.ok()
        records = reader.read_all() if ok else []
        reader.close()
    except Exception as e:  # the C++ reader raises assorted errors on corrupt files
        raise DataConfigError(f"data.path: cannot read ArrayRecord file {rel} ({e}); {fix}") from None
    if not ok:
        raise DataConfigError(
            f"data.path: cannot read ArrayRecord file {rel} (reader not ok: not an ArrayRecord "
            f"file?); {fix}")
    for i, rec in enumerate(records):
        if len(rec) % 4:
            raise DataConfigError(
                f"data.path: record {i} of {rel} has {len(rec)} bytes, not a multiple of 4; {fix}")
        ids = np.frombuffer(rec, dtype="<i4")
        if ids.size and (ids.min() < 0 or ids.max() > 255):
            raise DataConfigError(
                f"data.path: record {i} of {rel} has token ids outside [0, 256) "
                f"(min {ids.min()}, max {ids.max()}); records hold byte ids without specials; {fix}")
        yield f"{rel}:{i}", ids


def iter_documents(cfg, found: SourceFiles) -> Iterator[tuple[str, np.ndarray]]:
    """Yields ``(identity, ids)`` for the first `cfg.max_docs` non-empty documents.

    Documents are truncated to `cfg.max_doc_bytes` ids when that is > 0.
    """
    max_docs, max_len = int(cfg.max_docs), int(cfg.max_doc_bytes)
    n = 0
    for f in found.files:
        rel = found.relpath(f)
        if found.source in ("stdlib", "text_dir"):
            with open(f, "rb") as fh:
                docs = [(rel, fh.read())]
        elif found.source == "jsonl":
            docs = _read_jsonl(f, rel, cfg.text_field)
        else:
            docs = _read_array_record(f, rel)
        for identity, doc in docs:
            if max_len:
                doc = doc[:max_len]
            if len(doc) == 0:
                continue
            if isinstance(doc, bytes):
                doc = np.frombuffer(doc, dtype=np.uint8)
            yield identity, doc
            n += 1
            if max_docs and n >= max_docs:
                return


def write_array_record(path: str | os.PathLike, docs: Sequence[np.ndarray | Sequence[int]]) -> None:
    """Writes `docs` to an ArrayRecord file readable by ``data.source='array_record'``.

    Each element of `docs` is one document's token ids in ``[0, 256)``
    (e.g. ``ByteTokenizer().encode(text)``), stored as one record of
    little-endian int32 bytes; BOS/EOS are added by the pipeline, not here.
    """
    writer = array_record_module.ArrayRecordWriter(os.fspath(path), "group_size:1")
    try:
        for doc in docs:
            writer.write(np.asarray(doc, dtype="<i4").tobytes())
    finally:
        writer.close()
