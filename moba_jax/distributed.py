"""Several processes, one job: when to call ``jax.distributed.initialize``, batch layout, preemption.

    from moba_jax import distributed
    distributed.initialize(coordinator_address="10.0.0.1:1234", num_processes=2, process_id=0)

:func:`initialize` decides whether this process is one of several and only then
starts JAX's distributed runtime (a single plain process initialises nothing).
It uses, in order:

1. explicit arguments (``--coordinator_address``, ``--num_processes``, ``--process_id``);
2. the environment: ``JAX_COORDINATOR_ADDRESS`` (read by JAX itself) with
   ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (read here);
3. JAX's own cluster detection, where a launcher says there are several
   processes: SLURM (``srun`` with ``SLURM_NTASKS > 1``), Open MPI
   (``OMPI_COMM_WORLD_SIZE > 1``), Cloud TPU pods (``TPU_WORKER_HOSTNAMES`` or
   ``TPU_PROCESS_ADDRESSES`` listing several hosts), Kubernetes indexed jobs
   (``JOB_COMPLETION_INDEX``, needs ``pip install jax[k8s]``).

``mode="on"`` always calls ``jax.distributed.initialize()`` (any cluster JAX can
detect, e.g. a TPU pod whose metadata server, not its environment, describes
it); ``mode="off"`` never does. On CPU the cross-process collectives use gloo
(JAX's default ``jax_cpu_collectives_implementation``); nothing else to set.

Preemption: :func:`preemption_requested` turns SIGTERM (and a first Ctrl-C,
SIGINT; :func:`stop_signal` says which) into a flag that the training loop
polls at each step boundary. With several processes, JAX's preemption sync
manager (started by ``jax.distributed.initialize``) catches the signal and picks one step at which *every* process sees the request, so the
checkpoint they then write together is consistent.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time

import jax
import numpy as np

from moba_jax.sharding import MeshConfigError

log = logging.getLogger("moba_jax")

MODES = ("auto", "on", "off")


class DistributedError(RuntimeError):
    """The processes of a job cannot form a cluster (the message says why and what to do)."""


def _env_int(name: str) -> int | None:
    v = os.environ.get(name)
    if v is None or v.strip() == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise DistributedError(f"environment variable {name}={v!r} must be an integer") from None


def detected_launcher() -> str | None:
    """Name of the multi-process launcher visible in the environment, if any."""
    if (_env_int("SLURM_NTASKS") or 1) > 1 and "SLURM_STEP_NODELIST" in os.environ:
        return "slurm"
    if (_env_int("OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "openmpi"
    hosts = os.environ.get("TPU_PROCESS_ADDRESSES") or os.environ.get("TPU_WORKER_HOSTNAMES") or ""
    if len([h for h in hosts.split(",") if h.strip()]) > 1:
        return "tpu"
    if "KUBERNETES_SERVICE_HOST" in os.environ and "JOB_COMPLETION_INDEX" in os.environ:
        return "kubernetes"
    return None


def plan(coordinator_address: str | None = None, num_processes: int | None = None,
         process_id: int | None = None, mode: str = "auto") -> dict | None:
    """The keyword arguments for ``jax.distributed.initialize``, or None for a single process."""
    if mode not in MODES:
        raise DistributedError(f"--distributed={mode!r}: choose one of {', '.join(MODES)}")
    if mode == "off":
        return None
    address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    n = num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES")
    pid = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
    explicit = address is not None or (n is not None and n > 1) or mode == "on"
    if not explicit:
        launcher = detected_launcher()
        if launcher is None:
            return None
        log.info("distributed: %s launcher detected", launcher)
        return {}
    if n is not None and n < 1:
        raise DistributedError(f"--num_processes={n} must be >= 1")
    if n is not None and pid is not None and not 0 <= pid < n:
        raise DistributedError(f"--process_id={pid} must lie in [0, --num_processes={n})")
    if address is not None and (n is None or pid is None) and detected_launcher() is None:
        raise DistributedError(
            f"coordinator {address} given without the process count and this process's id; "
            "pass --num_processes and --process_id (or JAX_NUM_PROCESSES / JAX_PROCESS_ID)")
    if address is None and mode != "on" and detected_launcher() is None:
        raise DistributedError(
            f"--num_processes={n} needs --coordinator_address=HOST:PORT (process 0's host and a "
            "free port), or JAX_COORDINATOR_ADDRESS")
    kw = {}
    if address is not None:
        kw["coordinator_address"] = address
    if n is not None:
        kw["num_processes"] = n
    if pid is not None:
        kw["process_id"] = pid
    return kw


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, mode: str = "auto",
               timeout_s: int = 300) -> bool:
    """Starts JAX's distributed runtime when this process is one of several.

    Must run before any JAX computation. Returns whether it initialised.
    Raises :class:`DistributedError` with a one-line message when the cluster
    cannot be formed (for example a coordinator that does not answer within
    ``timeout_s`` seconds).
    """
    kw = plan(coordinator_address, num_processes, process_id, mode)
    if kw is None:
        return False
    if jax.distributed.is_initialized():
        return True
    where = kw.get("coordinator_address", "the auto-detected coordinator")
    deadline = time.monotonic() + timeout_s
    if "coordinator_address" in kw and kw.get("process_id", 0) != 0:
        # JAX aborts the whole process (no exception) when the coordinator never
        # answers, so first wait for its port to accept connections ourselves.
        _wait_for_coordinator(kw["coordinator_address"], deadline, kw)
    try:
        jax.distributed.initialize(
            **kw, initialization_timeout=max(int(deadline - time.monotonic()), 10))
    except Exception as e:  # the runtime raises XlaRuntimeError / ValueError / RuntimeError
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise DistributedError(
            f"cannot join the JAX cluster at {where} as process {kw.get('process_id', '?')} of "
            f"{kw.get('num_processes', '?')} within {timeout_s}s ({type(e).__name__}: {first}); "
            "check that process 0 is running, that the address and port are reachable from "
            "this host, and that every process got the same --num_processes") from e
    log.info("distributed: process %d of %d, %d local / %d global devices",
             jax.process_index(), jax.process_count(), jax.local_device_count(),
             jax.device_count())
    return True


def _split_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise DistributedError(f"coordinator address {address!r} must look like HOST:PORT")
    return host.strip("[]"), int(port)


def _wait_for_coordinator(address: str, deadline: float, kw: dict) -> None:
    host, port = _split_address(address)
    while True:
        try:
            with socket.create_connection((host, port), timeout=2.0):
                return
        except OSError as e:
            if time.monotonic() >= deadline:
                raise DistributedError(
                    f"cannot reach the JAX coordinator at {address} (process "
                    f"{kw.get('process_id')} of {kw.get('num_processes')}): {e.strerror or e} "
                    "until the timeout; start process 0 first (it hosts the coordinator), check "
                    "the address, port and firewall, or raise --coordinator_timeout_s") from None
            time.sleep(0.25)


def is_main() -> bool:
    """True on the process that writes metrics, tables and figures."""
    return jax.process_index() == 0


def check_batch_layout(batch_sharding, global_batch: int, seq_len: int) -> None:
    """Checks that process ``p`` owns rows ``[p*B/P, (p+1)*B/P)`` of the global batch.

    The data pipeline gives every process that slice; a mesh whose devices do
    not line up with it (for example a ``tensor`` axis spanning processes while
    the batch axes do not) would silently mix examples, so it is an error.
    """
    n = jax.process_count()
    if n == 1:
        return
    local = global_batch // n
    rows: dict[int, set[int]] = {p: set() for p in range(n)}
    for dev, idx in batch_sharding.devices_indices_map((global_batch, seq_len)).items():
        sl = idx[0]
        start, stop, _ = sl.indices(global_batch)
        rows[dev.process_index].update(range(start, stop))
    for p in range(n):
        if rows[p] != set(range(p * local, (p + 1) * local)):
            mesh = batch_sharding.mesh
            raise MeshConfigError(
                f"mesh {dict(mesh.shape)} over {n} processes x {jax.local_device_count()} devices: "
                f"process {p} would need its own {local} of the {global_batch} batch rows but its "
                "devices hold other rows; make mesh.data*mesh.fsdp a multiple of the process "
                "count and keep mesh.tensor within one process's devices")


def broadcast_from_main(value: int) -> int:
    """Process 0's ``value`` on every process (a no-op with one process)."""
    if jax.process_count() == 1:
        return int(value)
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))


# --- preemption ---------------------------------------------------------------

_sigterm = threading.Event()   # set by SIGTERM or a first SIGINT
_signal: list[int] = []        # which of them arrived first
_installed = False
_catch_sigint = False          # set by the command-line entry points (catch_sigint)

# Exit statuses of a process stopped by a signal after checkpointing: 75
# (EX_TEMPFAIL, "try again") for SIGTERM, 130 (the shell's 128 + SIGINT) for Ctrl-C.
EXIT_FOR_SIGNAL = {signal.SIGTERM: 75, signal.SIGINT: 130}


# A Ctrl-C normally ends in one line, the entry point's "interrupted: checkpoint saved
# at step N ...". Only when stopping takes longer than this (a long step, a slow
# checkpoint) is a notice printed first, so the user knows it is under way.
SLOW_STOP_NOTICE_S = 5.0


def _slow_stop_notice() -> None:
    os.write(2, b"Ctrl-C: checkpointing at the next step boundary, then exiting "
                b"(press Ctrl-C again to exit at once, without it)\n")


def _on_signal(signum, frame):
    del frame
    if signum == signal.SIGINT and _sigterm.is_set():
        # A second Ctrl-C: the user does not want to wait for the step boundary.
        os.write(2, b"second Ctrl-C: exiting now, without a checkpoint of the current step\n")
        os._exit(EXIT_FOR_SIGNAL[signal.SIGINT])
    if not _sigterm.is_set():
        _signal.append(signum)
        if signum == signal.SIGINT:
            notice = threading.Timer(SLOW_STOP_NOTICE_S, _slow_stop_notice)
            notice.daemon = True
            notice.start()
        else:
            log.warning("SIGTERM: checkpointing at the next step boundary, then exiting")
    _sigterm.set()


def catch_sigint(enabled: bool = True) -> None:
    """Lets :func:`install_preemption_handler` take Ctrl-C too (the command-line entry
    points turn this on). Library callers, such as a notebook calling ``train``, keep
    their own SIGINT handling: a notebook's interrupt still raises KeyboardInterrupt."""
    global _catch_sigint
    _catch_sigint = enabled


def install_preemption_handler() -> None:
    """Turns SIGTERM and SIGINT into a flag (idempotent; main thread only).

    With :func:`catch_sigint` (the command-line entry points), the first SIGINT
    (Ctrl-C) is handled like SIGTERM; a second one exits at once with status 130. :func:`stop_signal` says which signal arrived. With several
    processes JAX's preemption sync manager owns SIGTERM, so no Python handler is
    installed (it would replace JAX's) and Ctrl-C keeps Python's default.
    """
    global _installed
    if _installed or threading.current_thread() is not threading.main_thread():
        return
    if jax.distributed.is_initialized() and jax.process_count() > 1:
        _installed = True
        return
    signal.signal(signal.SIGTERM, _on_signal)
    if _catch_sigint:
        signal.signal(signal.SIGINT, _on_signal)
    _installed = True


def stop_signal() -> int | None:
    """The signal (``signal.SIGTERM`` or ``signal.SIGINT``) that asked this process to
    stop, or None; with several processes JAX's sync manager saw it, so SIGTERM."""
    if _signal:
        return _signal[0]
    return signal.SIGTERM if jax.process_count() > 1 else None


def stop_word() -> str:
    """How a stopped run is described: ``"interrupted"`` (Ctrl-C) or ``"preempted"``."""
    return "interrupted" if stop_signal() == signal.SIGINT else "preempted"


def stop_signal_name() -> str:
    """``"SIGINT"`` or ``"SIGTERM"`` (the latter when no signal was recorded)."""
    return signal.Signals(stop_signal() or signal.SIGTERM).name


def preemption_requested(step: int | None = None) -> bool:
    """Whether to checkpoint and stop now. Call it at every step boundary with the step."""
    if jax.process_count() > 1:
        if step is None:
            return False
        from jax.experimental import multihost_utils
        return bool(multihost_utils.reached_preemption_sync_point(int(step)))
    return _sigterm.is_set()
