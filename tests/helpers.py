"""Shared test utilities: run the CLI in a subprocess, small configs."""
from __future__ import annotations

import json
import os
import subprocess
import sys

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


def read_jsonl(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]


def tiny_overrides(**extra) -> list[str]:
    """Overrides shared by the training tests (fast, deterministic)."""
    kv = {"train.progress": "False", **extra}
    return [f"--config.{k}={v}" for k, v in kv.items()]
