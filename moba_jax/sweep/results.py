"""The sweep's results table: one row per finished run in ``results.jsonl`` / ``results.csv``.

Each row joins the run's plan (run, arm and the arm's display name and colour
family, size) with its ``RUN_DIR/result.json``
and the budget in PFLOP/s-days under both conventions. Concurrent workers may
rewrite the table at once; each write replaces the file atomically.
"""
from __future__ import annotations

import csv
import json
import os
import io

from moba_jax import fileio, jsonfiles, units
from moba_jax.sweep.plan import RunPlan, SweepConfigError

RESULT_FIELDS = ("run", "arm", "arm_display", "arm_colour", "size", "status", "n_params_nonembed",
                 "n_params", "steps", "tokens", "budget_flops", "convention", "final_val_loss",
                 "flops_per_token_exact", "flops_per_token_6nd", "flops_per_token_compiled",
                 "flops_exact", "flops_6nd", "pflops_days_exact", "pflops_days_6nd",
                 "unigram_entropy_nats")


def collect_results(workdir: str, plans: list[RunPlan]) -> list[dict]:
    """One row per run of ``plans`` whose ``result.json`` exists, in plan order."""
    rows = []
    for p in plans:
        path = os.path.join(workdir, p.name, "result.json")
        if not os.path.exists(path):
            continue
        res = jsonfiles.load(path, SweepConfigError, "delete it and rerun the sweep: the run "
                             "resumes from its last checkpoint and writes it again")
        row = {"run": p.name, "arm": p.arm, "arm_display": p.arm_display,
               "arm_colour": p.arm_colour, "size": p.size, "status": "done", **res}
        for c in ("exact", "6nd"):
            row[f"pflops_days_{c}"] = units.to_pflops_days(res[f"flops_{c}"])
        rows.append(row)
    return rows


def write_results(workdir: str, rows: list[dict]) -> bool:
    """Writes ``results.jsonl`` (every field) and ``results.csv`` (:data:`RESULT_FIELDS`),
    each whole (concurrent writers are safe) and only when its content changes, so that
    re-running a finished sweep writes nothing. Returns True when a file was written."""
    jsonl = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
    table = io.StringIO(newline="")
    w = csv.DictWriter(table, fieldnames=RESULT_FIELDS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    wrote = fileio.write_text_if_changed(os.path.join(workdir, "results.jsonl"), jsonl)
    return fileio.write_text_if_changed(os.path.join(workdir, "results.csv"), table.getvalue()) \
        or wrote
