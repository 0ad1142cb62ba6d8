"""Section (d): the project's test suite on the machine's CPU, in the background.

The parent starts it before the first job (``start``) with ``JAX_PLATFORMS=cpu``, pinned
to the last ``cfg.suite.cores`` CPUs (the jobs keep the others, see :func:`job_cpus`), with
``pytest-xdist`` workers where that plugin is installed, and its output in ``suite.log``;
:func:`finish` waits for it until the run's end, stops it there if it is still running,
and records pytest's summary line.
"""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time

from experiments.device_check import records

LOG = "suite.log"


def _cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:          # not Linux
        return list(range(os.cpu_count() or 1))


def suite_cpus(cfg) -> list[int] | None:
    """The CPUs the suite is pinned to, or ``None`` (no pinning: too few CPUs)."""
    cpus, n = _cpus(), int(cfg.suite.cores)
    return cpus[-n:] if len(cpus) > n + 1 else None


def job_cpus(cfg) -> list[int] | None:
    """The CPUs the jobs are pinned to while the suite runs (``None``: all)."""
    cpus, n = _cpus(), int(cfg.suite.cores)
    return cpus[:-n] if len(cpus) > n + 1 else None


def command(cfg) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", *cfg.suite.args]
    if int(cfg.suite.workers) > 0 and importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(int(cfg.suite.workers))]
    return cmd


def start(cfg, out: str, repo: str) -> subprocess.Popen:
    cmd = command(cfg)
    cpus = suite_cpus(cfg)
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    records.append(out, dict(section="suite", kind="started", command=" ".join(cmd[1:]),
                             cpus=cpus))
    log = open(os.path.join(out, LOG), "w")
    return subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)


def summary_line(text: str) -> str | None:
    """pytest's closing ``N passed, ... in Xs`` line, if it printed one."""
    for line in reversed(text.strip().splitlines()):
        if re.search(r"\d+ (passed|failed|error)", line):
            return line.strip("= ").strip()
    return None


def finish(proc: subprocess.Popen, out: str, deadline: float, started: float) -> dict:
    """Waits for the suite until ``deadline``, stops it there, records its summary."""
    status = "finished"
    try:
        proc.wait(timeout=max(deadline - time.time(), 0.1))
    except subprocess.TimeoutExpired:
        status = "stopped at the run's time limit"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with open(os.path.join(out, LOG), errors="replace") as f:
        text = f.read()
    rec = dict(section="suite", kind="result", status=status, returncode=proc.returncode,
               seconds=round(time.time() - started, 1), summary=summary_line(text))
    return records.append(out, rec)
