"""One job of the device check, in its own process (the parent, ``__main__.py``, starts
it and kills it at its time limit):

    python -m experiments.device_check.job OUT JOB_KEY DEADLINE

reads the run's resolved config from ``OUT/device_check_config.json`` and runs the
section's ``run_item(item, cfg, out, deadline, log)`` for each of the job's items in
turn. An item that raises is recorded (with its traceback printed) and the next item
runs; the exit status is 1 if any item failed. ``DEADLINE`` is the parent's kill time
(seconds since the epoch): items that measure several points skip the ones that would
not finish before it.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import traceback

from experiments.device_check import plan, records

CONFIG_FILE = "device_check_config.json"


def load_config(out: str):
    import ml_collections
    with open(os.path.join(out, CONFIG_FILE)) as f:
        return ml_collections.ConfigDict(json.load(f))


def main(argv) -> int:
    out, key, deadline = argv[1], argv[2], float(argv[3])
    cfg = load_config(out)
    job = next(j for j in plan.jobs(cfg) if j.key == key)
    module = importlib.import_module(f"experiments.device_check.{job.section}")
    failed = 0
    for item in job.items:
        try:
            module.run_item(item, cfg, out, deadline, log=lambda s: print(s, flush=True))
        except Exception as e:  # recorded with its reason; the next item runs
            traceback.print_exc()
            records.append(out, dict(section=job.section, kind="error", job=job.key,
                                     item=item, error=records.short_error(e)))
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
