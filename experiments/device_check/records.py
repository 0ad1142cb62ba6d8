"""What the device check writes, and the one timing rule every implementation is held to.

``DIR/device_check.json`` is a JSON list of records, rewritten whole (temporary file, then
rename) after every point, so a run cut short at any moment leaves a readable file with
everything measured so far. Each record has a ``section`` and a ``kind`` (``env``,
``point``, ``skipped``, ``error``, ``job``, ``check``, ...) and whatever it measured. The
writers are the section subprocesses, one at a time, and the parent process (job ends,
the background test suite); a lock on the folder keeps two writers from interleaving.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import statistics
import time
from typing import Any, Callable

FILE = "device_check.json"


def path(out: str) -> str:
    return os.path.join(out, FILE)


@contextlib.contextmanager
def _locked(out: str):
    fd = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)          # releases the lock


def read(out: str) -> list[dict]:
    """The records written so far (``[]`` before the first)."""
    try:
        with open(path(out)) as f:
            return json.load(f)
    except FileNotFoundError:
        return []


def append(out: str, record: dict) -> dict:
    """Adds ``record`` (stamped with the wall time) to ``DIR/device_check.json`` at once."""
    record = dict(record, wall_time=round(time.time(), 3))
    with _locked(out):
        records = read(out) + [record]
        tmp = path(out) + f".tmp{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(records, f, indent=1, default=str)
        os.replace(tmp, path(out))
    return record


def short_error(e: BaseException) -> str:
    """``Type: first line`` of an exception, at most 300 characters of it."""
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def time_call(call: Callable[[], Any], *, iters: int, max_seconds: float) -> dict:
    """The rule for every timed point, ours and the anchors': one warm-up call (which
    compiles: its time is ``warmup_s``), then up to ``iters`` timed calls, stopping early
    once the timed calls took ``max_seconds`` together (at least one is timed);
    ``time_s`` is their median. ``call`` must return only when the device is done."""
    t0 = time.perf_counter()
    call()
    warmup = time.perf_counter() - t0
    times: list[float] = []
    for _ in range(max(int(iters), 1)):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
        if max_seconds > 0 and sum(times) >= max_seconds:
            break
    return dict(time_s=statistics.median(times), times_s=times, warmup_s=warmup)
