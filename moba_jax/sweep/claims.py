"""Claim files: many sweep workers share one sweep directory, each run trained once.

A worker owns a run while ``SWEEP_DIR/claims/<run>.claim`` exists and names it.
The file is created atomically with its full contents (written to a private
temporary file, then ``os.link``-ed into place, which fails if the name already
exists; this is the NFS-safe form of ``O_CREAT | O_EXCL``). While the run trains
a heartbeat thread touches the file's mtime every ``heartbeat_s`` seconds. A
claim whose mtime is older than ``timeout_s`` (the owner's, recorded in the
file) belongs to a dead worker and may be taken over; taking over (remove the stale file, link a new one) happens under
an exclusive ``flock`` on ``claims/.lock`` so two workers cannot both take it.

``timeout_s`` must be well above ``heartbeat_s`` (defaults 600 s and 30 s), and
hosts sharing a directory need roughly synchronised clocks (mtimes are compared
with the local time).
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import threading
import time
import uuid

log = logging.getLogger("moba_jax")


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def claim_path(claims_dir: str, run: str) -> str:
    return os.path.join(claims_dir, f"{run}.claim")


def read_claim(path: str) -> dict | None:
    """The claim's contents plus ``age_s`` (seconds since its last heartbeat), or None."""
    try:
        age = time.time() - os.stat(path).st_mtime
        with open(path) as f:
            info = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        info = {"owner": "?"}
        try:
            age = time.time() - os.stat(path).st_mtime
        except FileNotFoundError:
            return None
    info["age_s"] = max(age, 0.0)
    return info


def is_stale(info: dict, default_timeout_s: float) -> bool:
    """Whether a claim read by :func:`read_claim` missed heartbeats for longer than
    the timeout its owner recorded (or ``default_timeout_s`` for claims without one)."""
    return info["age_s"] >= float(info.get("timeout_s") or default_timeout_s)


@contextlib.contextmanager
def _locked(claims_dir: str):
    fd = os.open(os.path.join(claims_dir, ".lock"), os.O_CREAT | os.O_RDWR, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _create(path: str, info: dict) -> bool:
    tmp = f"{path}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "w") as f:
        json.dump(info, f)
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    finally:
        os.remove(tmp)


class Claim:
    """A held claim: heartbeats in a daemon thread until :meth:`release`."""

    def __init__(self, path: str, owner: str, heartbeat_s: float):
        self.path, self.owner = path, owner
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(heartbeat_s,), daemon=True,
                                        name=f"heartbeat:{os.path.basename(path)}")
        self._thread.start()

    def _still_mine(self) -> bool:
        info = read_claim(self.path)
        return info is not None and info.get("owner") == self.owner

    def _beat(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                if not self._still_mine():
                    if not self.lost:
                        log.warning("claim %s was taken over by another worker (heartbeats "
                                    "older than the claim timeout?)", self.path)
                    self.lost = True
                    continue
                os.utime(self.path)
            except OSError as e:  # a flaky shared filesystem: try again next beat
                log.warning("heartbeat on %s failed: %s", self.path, e)

    def release(self) -> None:
        """Stops the heartbeat and removes the claim if it is still this worker's."""
        self._stop.set()
        self._thread.join()
        with _locked(os.path.dirname(self.path)):
            if self._still_mine():
                os.remove(self.path)


def try_claim(claims_dir: str, run: str, owner: str, *, timeout_s: float,
              heartbeat_s: float) -> Claim | None:
    """Claims ``run`` for ``owner`` (taking over a stale claim), or None if another worker holds it."""
    path = claim_path(claims_dir, run)
    info = {"owner": owner, "host": socket.gethostname(), "pid": os.getpid(),
            "since": time.time(), "heartbeat_s": heartbeat_s, "timeout_s": timeout_s}
    if not _create(path, info):
        with _locked(claims_dir):
            if not _create(path, info):
                old = read_claim(path)
                if old is not None and not is_stale(old, timeout_s):
                    return None
                if old is not None:
                    log.warning("%s: taking over the claim of %s (no heartbeat for %.0fs)",
                                run, old.get("owner"), old["age_s"])
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                if not _create(path, info):
                    return None
    return Claim(path, owner, heartbeat_s)
