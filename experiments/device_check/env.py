"""The ``env`` job: what the numbers were measured on (one record, first in the file)."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata

from experiments.device_check import records

PACKAGES = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
            "orbax-checkpoint", "grain", "numpy", "torch", "triton", "fla-core",
            "flash-linear-attention", "jax-linear-attention", "equinox")


def versions() -> dict:
    out = {}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def _run(cmd) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        return records.short_error(e)


def run_item(name: str, cfg, out: str, deadline: float, log=print) -> None:
    del name, deadline
    import jax

    devices = jax.devices()
    rec = dict(section="env", kind="env", python=sys.version.split()[0],
               platform=platform.platform(), cpus=os.cpu_count(), versions=versions(),
               backend=jax.default_backend(), device_kind=devices[0].device_kind,
               device_count=len(devices), variant=cfg.variant,
               nvidia_smi=_run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version,"
                                "clocks.max.sm", "--format=csv,noheader"]),
               git_commit=_run(["git", "rev-parse", "--short", "HEAD"]))
    records.append(out, rec)
    log(f"[env] python {rec['python']}, jax {rec['versions'].get('jax')} on "
        f"{rec['backend']} ({rec['device_kind']} x {rec['device_count']}); "
        f"{rec['nvidia_smi'] or 'no nvidia-smi'}")
