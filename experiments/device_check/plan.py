"""The device check's jobs in priority order, and the time limit each one gets.

A job is one subprocess that runs one or more *items* of a section in turn: attention
implementations, training arms (or ``peak``), accuracy checks (``ours`` or an anchor).
On a GPU every item is a job of its own, so that a hang or crash costs only that item;
the smoke config groups them, to pay a process start-up (importing jax) once per
section rather than once per item. The order is the issue's priority: attention
timings, training throughput, MoBA tilings, then the accuracy checks at small shapes
(after the timings, so that a slow check never costs a timing). ``env`` and the
``inputs`` draw come first (seconds). The background test suite is not a job: the
parent starts it at once (``suite.py``).
"""
from __future__ import annotations

import dataclasses

SECTIONS = ("env", "attention", "training", "tiles", "accuracy", "suite")


@dataclasses.dataclass(frozen=True)
class Job:
    section: str
    items: tuple[str, ...]
    weight: float
    min_s: float

    @property
    def key(self) -> str:
        return f"{self.section}:{'+'.join(self.items)}"


def _jobs(section: str, spec) -> list[Job]:
    """``spec``: ``((items, weight, min_s), ...)`` from the config."""
    return [Job(section, tuple(items), float(w), float(m)) for items, w, m in spec]


def jobs(cfg, sections=SECTIONS) -> list[Job]:
    """The jobs of ``cfg`` (``configs/device_check.py``) for the chosen sections."""
    out = []
    if "env" in sections:
        out.append(Job("env", ("env",), cfg.env.weight, cfg.env.min_s))
    if "attention" in sections:
        out.append(Job("attention", ("inputs",), cfg.inputs.weight, cfg.inputs.min_s))
        out += _jobs("attention", cfg.attention)
    if "training" in sections:
        out += _jobs("training", cfg.training.jobs)
    if "tiles" in sections:
        out.append(Job("tiles", (cfg.tiles.impl,), cfg.tiles.weight, cfg.tiles.min_s))
    if "accuracy" in sections:
        out += _jobs("accuracy", cfg.accuracy.jobs)
    return out


def items(cfg, section: str) -> list[str]:
    """Every item of ``section`` in job order (e.g. the attention implementations)."""
    return [i for j in jobs(cfg, (section,)) for i in j.items if j.section == section]


def time_limit(remaining_jobs: list[Job], seconds_left: float) -> float:
    """The hard limit of ``remaining_jobs[0]``: its weight's share of ``seconds_left``
    among the jobs still to run, raised to its ``min_s`` when that much is left."""
    if seconds_left <= 0:
        return 0.0
    job = remaining_jobs[0]
    share = seconds_left * job.weight / sum(j.weight for j in remaining_jobs)
    return min(seconds_left, max(share, job.min_s))
