"""Shared test utilities: run the CLI in a subprocess, small configs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(module: str, *args: str, devices: int = 1, env: dict | None = None,
            timeout: float = 600, check: bool = False) -> subprocess.CompletedProcess:
    """Runs ``python -m module args`` from the repo root with N simulated CPU devices."""
    e = dict(os.environ)
    e["JAX_NUM_CPU_DEVICES"] = str(devices)
    e["JAX_PLATFORMS"] = "cpu"
    e.update(env or {})
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {' '.join(args)} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def read_jsonl(path: str, live: bool = False) -> list[dict]:
    """The records of a JSON-lines file; ``live``: the file is being appended to, so a
    last line caught half-written is left out (a reader may see part of a write)."""
    with open(path) as f:
        lines = [l for l in f if l.strip()]
    if live and lines and not lines[-1].endswith("\n"):
        lines = lines[:-1]
    return [json.loads(l) for l in lines]


def tiny_overrides(**extra) -> list[str]:
    """Overrides shared by the training tests (fast, deterministic)."""
    kv = {"train.progress": "False", **extra}
    return [f"--config.{k}={v}" for k, v in kv.items()]


def popen(module, *args):
    """Starts ``python -m module args`` on 1 CPU device without waiting (pipes captured)."""
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1", "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def signal_when(proc, metrics, min_step, sig=signal.SIGTERM, timeout=180):
    """Sends ``sig`` once ``metrics`` logs a step >= ``min_step``; returns (rc, out, err)."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any(r["step"] >= min_step for r in read_jsonl(metrics, live=True)):
            proc.send_signal(sig)
            break
        time.sleep(0.01)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err
