"""Runs ``python -m MODULE ARGS`` with a filesystem fault injected under one folder.

    python -m tests.fault_inject EROFS|EACCES|ENOSPC FOLDER SKIP MODULE [ARGS...]

The tests run as root here and in CI, where permission bits do not stop a write and a
read-only or full file system cannot be mounted, so the fault is made at the Python
boundary instead, for paths under FOLDER only:

- ``EROFS`` / ``EACCES``: every call that would create, write, rename or remove a file
  or folder there (``open`` for writing, ``os.open`` with write flags, ``os.mkdir``,
  ``os.replace``/``rename``/``link``/``remove``/``unlink``/``rmdir``) raises
  ``OSError(errno, strerror, path)``; reading works.
- ``ENOSPC``: ``shutil.disk_usage`` reports no free space there, which is how the
  trainer learns, before writing a checkpoint, that it does not fit (a save cut short
  part-way is cleaned up too, see ``moba_jax/train/checkpointing.py``; that path was
  checked on a real 600 KB tmpfs, see docs/failures.md).

The first SKIP faulting calls succeed (e.g. ``ENOSPC 1``: the first checkpoint fits,
the second does not).
"""
from __future__ import annotations

import builtins
import errno
import io
import os
import runpy
import shutil
import sys


def _install(code: int, folder: str, skip: int) -> None:
    folder = os.path.realpath(folder)
    left = [skip]

    def hit(path) -> bool:
        try:
            p = os.path.realpath(os.fspath(path))
        except TypeError:
            return False          # a file descriptor
        if not (p == folder or p.startswith(folder + os.sep)):
            return False
        if left[0] > 0:
            left[0] -= 1
            return False
        return True

    def fail(path):
        raise OSError(code, os.strerror(code), os.fspath(path))

    if code == errno.ENOSPC:
        real_usage = shutil.disk_usage

        def disk_usage(path):
            u = real_usage(path)
            return type(u)(u.total, u.total, 0) if hit(path) else u
        shutil.disk_usage = disk_usage
        return

    real_open, real_os_open = builtins.open, os.open

    def guarded_open(file, mode="r", *a, **k):
        if isinstance(mode, str) and any(c in mode for c in "wax+") and hit(file):
            fail(file)
        return real_open(file, mode, *a, **k)

    def guarded_os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND) and hit(path):
            fail(path)
        return real_os_open(path, flags, *a, **k)

    builtins.open = io.open = guarded_open
    os.open = guarded_os_open
    for name in ("mkdir", "rmdir", "remove", "unlink"):
        real = getattr(os, name)

        def wrapped(path, *a, _real=real, **k):
            if hit(path):
                fail(path)
            return _real(path, *a, **k)
        setattr(os, name, wrapped)
    for name in ("replace", "rename", "link"):
        real = getattr(os, name)

        def wrapped2(src, dst, *a, _real=real, **k):
            if hit(dst) or hit(src):
                fail(dst)
            return _real(src, dst, *a, **k)
        setattr(os, name, wrapped2)


def main() -> None:
    name, folder, skip, module, *args = sys.argv[1:]
    _install(getattr(errno, name), folder, int(skip))
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
