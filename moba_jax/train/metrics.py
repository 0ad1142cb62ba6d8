"""Metrics as JSON lines (and optionally TensorBoard event files), plus MFU bookkeeping.

With ``train.tensorboard=True`` every record written to ``metrics.jsonl`` also goes to
``RUN_DIR/tb/`` as one scalar per numeric field (tag = the JSON key, step = the record's
``step``), through ``tensorboardX`` (``pip install -e ".[tensorboard]"``, imported only
when the flag is on). TensorBoard stores scalars as float32. ``tensorboard
--logdir=SWEEP_DIR`` then shows every run of a sweep side by side.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time

import jax
import jax.numpy as jnp

from moba_jax import fileio

# Train-config fields that change how a run is logged or run, not what it computes: left
# out of the run's fingerprint (so toggling them keeps a run resumable) and of the sweep's.
LOGGING_FIELDS = ("log_every", "checkpoint_every", "progress", "peak_flops_per_device",
                  "tensorboard", "prefetch", "async_checkpoints", "forbid_host_sync_between_logs")

# Dense peak FLOP/s per device (bf16 matmul) by device_kind prefix. MFU (compiled
# FLOPs per second over the peak) uses it, ``train.peak_flops_per_device`` when given,
# or on CPU a matmul measured at start-up (:func:`peak_flops_per_device`).
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


# The CPU "peak": a float32 matmul of this size, timed at start-up (see below).
CPU_PEAK_MATMUL = 1024
_measured_cpu_peak: list[float] = []


def measure_matmul_flops(n: int = CPU_PEAK_MATMUL, repeats: int = 5,
                         dtype: str = "float32") -> float:
    """FLOP/s of a ``[n, n] @ [n, n]`` matmul in ``dtype`` on the first device, best of
    ``repeats`` after one compile-and-warm-up call (about 0.1 s on a 2-core CPU at the
    default float32 1024^3)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    mm = jax.jit(lambda x, y: x @ y)
    mm(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        mm(a, a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def peak_flops_per_device(override: float = 0.0) -> tuple[float | None, str]:
    """``(peak FLOP/s per device, where it comes from)`` for MFU.

    ``train.peak_flops_per_device`` when set; else the accelerator's dense bf16 peak by
    device kind (:data:`PEAK_FLOPS`); else, on CPU, a float32 matmul measured once per
    process (:func:`measure_matmul_flops`), shared by the process's local CPU devices
    (they share its cores); else ``(None, reason)``: no MFU.
    """
    if override and override > 0:
        return float(override), "train.peak_flops_per_device"
    device = jax.local_devices()[0]
    for prefix, peak in PEAK_FLOPS.items():
        if device.device_kind.startswith(prefix):
            return peak, f"{prefix} dense bf16 peak (table)"
    if device.platform == "cpu":
        if not _measured_cpu_peak:
            _measured_cpu_peak.append(measure_matmul_flops())
        n = jax.local_device_count()
        return (_measured_cpu_peak[0] / n, f"float32 {CPU_PEAK_MATMUL}^3 matmul measured at "
                f"start-up ({_measured_cpu_peak[0] / 1e9:.0f} GFLOP/s), shared by {n} CPU device(s)")
    return None, f"unknown peak for device kind {device.device_kind!r}; set train.peak_flops_per_device"


def _clean(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep them visible as strings
    return v


def tensorboard_available() -> bool:
    """Whether ``tensorboardX`` (the writer behind ``train.tensorboard``) is installed."""
    import importlib.util
    return importlib.util.find_spec("tensorboardX") is not None


def _scalar(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class MetricsWriter:
    """Appends one JSON object per line to ``path`` (written by process 0 only).

    ``tensorboard_dir``: also write each record's numeric fields there as TensorBoard
    scalars (``None``: JSON lines only).
    """

    def __init__(self, path: str, enabled: bool = True, tensorboard_dir: str | None = None):
        self.path = path
        self.enabled = enabled
        self.tensorboard_dir = tensorboard_dir if enabled else None
        self._tb = None
        self._purge_step = None

    def reset(self) -> None:
        """Removes what an earlier, unfinished attempt of a fresh run logged."""
        if not self.enabled:
            return
        if os.path.exists(self.path):
            os.remove(self.path)
        if self.tensorboard_dir and os.path.isdir(self.tensorboard_dir):
            shutil.rmtree(self.tensorboard_dir)

    def truncate_after(self, step: int) -> None:
        """Drops lines logged after ``step`` (a resumed run re-logs them), and a last line
        that a kill cut short; TensorBoard is told to discard its events after ``step``
        too (``purge_step``)."""
        if not self.enabled:
            return
        self._purge_step = step + 1
        if not os.path.exists(self.path):
            return
        with open(self.path) as f:
            lines = [l for l in f if l.strip()]
        keep = []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break          # the process died mid-write: the line is re-logged
                raise
            if record["step"] <= step:
                keep.append(line if line.endswith("\n") else line + "\n")
        fileio.write_text_if_changed(self.path, "".join(keep))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        _append_whole(self.path, (json.dumps({k: _clean(v) for k, v in record.items()})
                                  + "\n").encode())
        if self.tensorboard_dir:
            tb = self._tensorboard()
            for k, v in record.items():
                if k != "step" and _scalar(v):
                    tb.add_scalar(k, float(v), int(record["step"]))
            tb.flush()

    def _tensorboard(self):
        if self._tb is None:
            from tensorboardX import SummaryWriter
            # Event files are named by the second they were opened in; the suffix keeps a
            # resume within the same second from overwriting the earlier file (and sorts after it).
            self._tb = SummaryWriter(self.tensorboard_dir, purge_step=self._purge_step,
                                     filename_suffix=f".{time.time_ns():020d}")
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _append_whole(path: str, data: bytes) -> None:
    """Appends ``data`` to ``path`` entirely or not at all: a write cut short (a full
    disk) is truncated away, so the resumed run never meets half a line."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        try:
            done = 0
            while done < len(data):
                done += os.write(fd, data[done:])
        except OSError:
            os.ftruncate(fd, size)
            raise
    finally:
        os.close(fd)


def read_metrics(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]

