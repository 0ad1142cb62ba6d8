"""Files written whole or not at all, and filesystem faults named in one line.

Every result, record and table the project writes goes through :func:`write_atomic`:
the content is written to a private temporary file beside the target and renamed
into place, and the temporary file is removed whatever happens, so a full disk, a
read-only or permission-denied directory, or a crash leaves the old file (or none),
never half of a new one and never a ``*.tmp``.

:func:`filesystem_fault` finds such a fault in an exception (also when a library,
e.g. orbax or tensorstore, wrapped it), and :func:`fault_message` turns it into the
entry points' one line: the path, the cause and what to do
(``experiments/common.py`` exits with :data:`EXIT_IO_ERROR`).
"""
from __future__ import annotations

import errno
import json
import os
import re
import uuid
from typing import Callable

EXIT_IO_ERROR = 74   # sysexits.h EX_IOERR

# errno -> what to do about it.
_FIXES = {
    errno.EROFS: "the file system is read-only: give a writable --workdir (report and "
                 "evaluate: --out=DIR for their outputs)",
    errno.EACCES: "no permission to write there: fix its permissions (chmod/chown) or give "
                  "another directory",
    errno.EPERM: "no permission to write there: fix its permissions (chmod/chown) or give "
                 "another directory",
    errno.ENOSPC: "the disk is full: free space (e.g. old runs' checkpoints/ folders), then "
                  "run the same command again to resume",
    errno.EDQUOT: "the disk quota is used up: free space, then run the same command again "
                  "to resume",
}
# Messages of faults that reach us as text only (tensorstore, orbax, absl).
_TEXTS = {"Read-only file system": errno.EROFS, "Permission denied": errno.EACCES,
          "No space left on device": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT}


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def filesystem_fault(exc: BaseException) -> OSError | None:
    """The read-only / permission / full-disk fault behind ``exc``, or None (the one
    naming a path when several in the chain qualify)."""
    faults = [e for e in _chain(exc) if isinstance(e, OSError) and e.errno in _FIXES]
    if faults:
        return next((e for e in faults if e.filename), faults[0])
    for e in _chain(exc):
        text = str(e)
        for needle, code in _TEXTS.items():
            if needle in text:
                path = re.search(r"""['"](/[^'"]+)['"]""", text)
                return OSError(code, os.strerror(code), path.group(1) if path else None)
    return None


def fault_message(fault: OSError) -> str:
    """One line: ``cannot write PATH: <cause>; <what to do>``."""
    where = f" {fault.filename}" if fault.filename else ""
    cause = fault.strerror or os.strerror(fault.errno)
    return f"cannot write{where}: {cause}; {_FIXES.get(fault.errno, 'check the directory')}"


def write_atomic(path: str, write: Callable, *, binary: bool = False,
                 exclusive: bool = False) -> bool:
    """Writes ``path`` whole through ``write(file)``, via a private temporary file.

    ``exclusive``: only if ``path`` does not exist yet (concurrent writers: the first
    one wins, the others get False). Returns True when the file was written. The
    temporary file is removed whatever happens.
    """
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"newline": ""})) as f:
            write(f)
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)   # fails if the name exists
            return True
        except FileExistsError:
            return False
    finally:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass


def write_text_if_changed(path: str, text: str) -> bool:
    """Writes ``text`` to ``path`` unless it already holds exactly that (so re-running a
    finished job in a read-only directory writes nothing). Returns True when written."""
    try:
        with open(path, newline="") as f:
            if f.read() == text:
                return False
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    return write_atomic(path, lambda f: f.write(text))


def write_json(path: str, obj, *, exclusive: bool = False) -> bool:
    """:func:`write_atomic` of ``obj`` as indented, key-sorted JSON."""
    return write_atomic(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True, default=str),
                        exclusive=exclusive)


def check_writable(directory: str) -> None:
    """Creates ``directory`` if needed and proves it can take a file (raises the OSError
    otherwise), so that a job whose outputs come at the end fails before the work."""
    os.makedirs(directory, exist_ok=True)
    write_atomic(os.path.join(directory, ".write-test"), lambda f: None, exclusive=True)
    try:
        os.remove(os.path.join(directory, ".write-test"))
    except FileNotFoundError:
        pass
