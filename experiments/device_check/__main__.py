"""The one command to run on a GPU machine: timings, training throughput, MoBA tilings,
accuracy checks and the test suite, each in its own time-limited subprocess.

    python -m experiments.device_check --out=/tmp/dc --budget_s=480
    python -m experiments.device_check --smoke --out=/tmp/dc_smoke     # CPU, tiny shapes
    python -m experiments.device_check --out=/tmp/dc --sections=attention \\
        --config=configs/device_check.py --config.seq_lens='(4096,16384)'

What it measures, in which order, and how the budget is shared: ``configs/device_check.py``.
It writes into ``--out``, as it goes: ``device_check.json`` (every point as soon as it is
measured), ``device_check.log`` (every job's output), ``suite.log`` (the test suite's),
``device_check_config.json`` (the resolved config), and at the end ``device_check.md``
(the summary table, also printed). The inputs are cached under ``--cache_dir`` (several GB
at 128K tokens; never inside ``--out``). Running it on a GPU machine without a network:
``docs/device_check.md``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from absl import flags
from ml_collections import config_flags

from experiments import common
from experiments.device_check import job as job_mod
from experiments.device_check import plan, records, report, suite

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Device-check config (default configs/device_check.py, or :smoke with "
    "--smoke); give it to override fields, e.g. --config.seq_lens='(4096,)'.")
_OUT = flags.DEFINE_string("out", None, "Output folder (made if missing; must not hold an "
                           "earlier run's device_check.json).")
_BUDGET = flags.DEFINE_float("budget_s", None, "Wall-clock budget in seconds for the whole "
                             "run (default 480; 120 with --smoke).")
_SMOKE = flags.DEFINE_bool("smoke", False, "Every section's code path at tiny shapes on "
                           "CPU (configs/device_check.py:smoke).")
_SECTIONS = flags.DEFINE_string("sections", ",".join(plan.SECTIONS),
                                "Comma-separated subset of " + ", ".join(plan.SECTIONS) + ".")
_CACHE = flags.DEFINE_string("cache_dir", "/tmp/moba_jax_device_check_inputs",
                             "Where the shared inputs are cached.")
flags.mark_flag_as_required("out")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(common.EXIT_CONFIG_ERROR)


def resolve_config():
    from configs import device_check
    if _CONFIG.value is not None:
        if _SMOKE.value and _CONFIG.value.get("variant") != "smoke":
            _fail("--smoke and a --config other than configs/device_check.py:smoke were both "
                  "given; pass one of them")
        cfg = _CONFIG.value.copy_and_resolve_references()
    else:
        cfg = device_check.get_config("smoke" if _SMOKE.value else "gpu")
    cfg.cache_dir = os.path.abspath(_CACHE.value)
    return cfg


def _sections() -> tuple[str, ...]:
    chosen = tuple(s.strip() for s in _SECTIONS.value.split(",") if s.strip())
    unknown = [s for s in chosen if s not in plan.SECTIONS]
    if unknown or not chosen:
        _fail(f"--sections={_SECTIONS.value!r}: {'unknown ' + ', '.join(unknown) if unknown else 'empty'}; "
              f"choose from {', '.join(plan.SECTIONS)}")
    return chosen


def _stream(pipe, sink) -> None:
    for line in iter(pipe.readline, ""):
        sys.stdout.write(line)
        sys.stdout.flush()
        sink.write(line)
        sink.flush()


def run_job(job: plan.Job, out: str, limit: float, cpus, logfile) -> dict:
    """Runs one job in its own process group, killed at ``limit`` seconds."""
    start = time.time()
    deadline = start + limit
    logfile.write(f"--- {job.key} (limit {limit:.0f} s)\n")
    print(f"--- {job.key} (limit {limit:.0f} s)", flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "experiments.device_check.job", out, job.key, repr(deadline)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, errors="replace", env=dict(os.environ, PYTHONUNBUFFERED="1"),
        start_new_session=True, preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    reader = threading.Thread(target=_stream, args=(proc.stdout, logfile), daemon=True)
    reader.start()
    try:
        proc.wait(timeout=limit)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        status = f"killed at its {limit:.0f} s limit"
    except BaseException:          # Ctrl-C or SIGTERM: no job outlives the run
        os.killpg(proc.pid, 9)
        raise
    reader.join(timeout=5)
    rec = dict(section=job.section, kind="job", job=job.key, limit_s=round(limit, 1),
               seconds=round(time.time() - start, 1), status=status)
    print(f"--- {job.key}: {status} after {rec['seconds']:.1f} s", flush=True)
    return records.append(out, rec)


def main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; see --helpshort")
    common.setup_logging()
    cfg, sections = resolve_config(), _sections()
    budget = _BUDGET.value if _BUDGET.value is not None else (120.0 if _SMOKE.value else 480.0)
    if budget <= 0:
        _fail(f"--budget_s={budget:g}: the budget must be positive, e.g. --budget_s=480")
    out = os.path.abspath(_OUT.value)
    if os.path.exists(records.path(out)):
        _fail(f"--out={out} already holds device_check.json from an earlier run; pick a new "
              "folder or remove that file")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, job_mod.CONFIG_FILE), "w") as f:
        json.dump(cfg.to_dict(), f, indent=1)
    started = time.time()
    end = started + budget
    records.append(out, dict(section="run", kind="start", budget_s=budget, sections=sections,
                             variant=cfg.variant,
                             argv=["python", "-m", "experiments.device_check", *sys.argv[1:]]))
    suite_proc = suite.start(cfg, out, REPO) if "suite" in sections else None
    cpus = suite.job_cpus(cfg) if suite_proc else None
    todo = plan.jobs(cfg, sections)
    try:
        with open(os.path.join(out, "device_check.log"), "a") as logfile:
            for i, job in enumerate(todo):
                left = end - float(cfg.reserve_s) - time.time()
                limit = plan.time_limit(todo[i:], left)
                if limit < 5:
                    records.append(out, dict(section=job.section, kind="job", job=job.key,
                                             status="not run: the budget was spent",
                                             limit_s=0))
                    continue
                run_job(job, out, limit, cpus, logfile)
        if suite_proc:
            r = suite.finish(suite_proc, out, end - 2, started)
            print(f"--- suite: {r['status']}: {r['summary']}", flush=True)
    finally:
        if suite_proc and suite_proc.poll() is None:
            os.killpg(suite_proc.pid, 9)
    text = report.markdown(records.read(out), wall_s=time.time() - started)
    with open(os.path.join(out, report.FILE), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    common.run(main)
