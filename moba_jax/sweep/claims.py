"""Claim files: many sweep workers share one sweep directory, each run trained once.

A worker owns a run while ``SWEEP_DIR/claims/<run>.claim`` exists and names it.
The file is created atomically with its full contents (written to a private
temporary file, then ``os.link``-ed into place, which fails if the name already
exists; this is the NFS-safe form of ``O_CREAT | O_EXCL``). The claim records
the owner's host, PID, the process's start time (Linux: field 22 of
``/proc/<pid>/stat``, clock ticks since boot), boot id and PID namespace. While
the run trains a heartbeat thread touches the file's mtime every ``heartbeat_s``
seconds.

A claim's owner is dead (:func:`owner_state`) when the claim names this host
(same boot, same PID namespace) and its PID is gone or now belongs to another
process (a different start time): such a claim is taken over at once. A claim
from another host is stale, and may be taken over, when its mtime is older than
the *reader's* ``timeout_s`` (``--claim_timeout_s``). Taking over (remove the old
file, link a new one) happens under an exclusive ``flock`` on ``claims/.lock``
so two workers cannot both take it.

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

from moba_jax import fileio

log = logging.getLogger("moba_jax")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def process_start_time(pid: int) -> int | None:
    """When process ``pid`` started, in clock ticks since boot (Linux), or None when
    unknown (no ``/proc``, or no such process)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    try:   # the command name (field 2) may hold spaces and parentheses: split after it
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _boot_id() -> str | None:
    return _read("/proc/sys/kernel/random/boot_id")


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def owner_identity() -> dict:
    """What a claim records to recognise its owner process later on this host."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "start_ticks": process_start_time(os.getpid()), "boot_id": _boot_id(),
            "pid_ns": _pid_namespace()}


def _pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # someone else's process: it exists
        return True
    return True


def owner_state(info: dict) -> str:
    """``"alive"`` or ``"dead"`` for a claim made on this host, ``"unknown"`` otherwise.

    Dead: the claim names this host, boot and PID namespace, and its PID is gone
    or belongs to a process with another start time (the PID was reused). Where
    start times cannot be read (no ``/proc``) only a missing PID counts as dead.
    """
    if info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return "unknown"
    boot, ns = _boot_id(), _pid_namespace()
    if info.get("boot_id") and boot and info["boot_id"] != boot:
        return "dead"    # the machine rebooted since
    if info.get("pid_ns") and ns and info["pid_ns"] != ns:
        return "unknown"  # another container with the same host name
    pid = info["pid"]
    if not _pid_exists(pid):
        return "dead"
    then, now = info.get("start_ticks"), process_start_time(pid)
    if then is not None and now is not None and then != now:
        return "dead"
    return "alive"


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


def claim_state(info: dict, timeout_s: float) -> str:
    """A claim read by :func:`read_claim`: ``"live"`` (its owner is working on it),
    ``"dead"`` (its owner process on this host is gone: take it over now) or
    ``"stale"`` (no heartbeat for ``timeout_s`` seconds: take it over)."""
    owner = owner_state(info)
    if owner == "dead":
        return "dead"
    if owner == "alive":
        return "live"
    return "stale" if info["age_s"] >= float(timeout_s) else "live"


def is_stale(info: dict, timeout_s: float) -> bool:
    """Whether another worker may take the claim over (its owner is dead or missed
    heartbeats for ``timeout_s`` seconds, the reader's timeout)."""
    return claim_state(info, timeout_s) != "live"


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
    return fileio.write_atomic(path, lambda f: json.dump(info, f), exclusive=True)


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
    info = {"owner": owner, **owner_identity(), "since": time.time(),
            "heartbeat_s": heartbeat_s, "timeout_s": timeout_s}
    if not _create(path, info):
        with _locked(claims_dir):
            if not _create(path, info):
                old = read_claim(path)
                if old is not None and not is_stale(old, timeout_s):
                    return None
                if old is not None:
                    why = ("its process is gone" if claim_state(old, timeout_s) == "dead"
                           else f"no heartbeat for {old['age_s']:.0f}s")
                    log.warning("%s: taking over the claim of %s (%s)", run, old.get("owner"), why)
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
                if not _create(path, info):
                    return None
    return Claim(path, owner, heartbeat_s)
