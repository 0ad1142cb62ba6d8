"""Several sweep workers on one directory: each run trained once, dead workers' runs taken over."""
import os
import signal
import subprocess
import sys
import time

import pytest

from configs.scaling import get_config
from moba_jax.sweep import check_sweep_dir, plan_sweep
from tests.helpers import REPO, read_jsonl, run_cli

SWEEP = "--config=configs/scaling.py:tiny"
FAST_CLAIMS = ["--heartbeat_s=0.5", "--claim_timeout_s=3"]
EXIT_FAILED_RUNS = 3


def start_worker(workdir, name, *extra):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "1"}
    return subprocess.Popen([sys.executable, "-m", "experiments.sweep", SWEEP, f"--workdir={workdir}",
                             f"--worker_id={name}", *extra], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


EXIT_RUNS_LEFT = 4


def finish(proc, timeout=240, runs_left_ok=False):
    """A worker's stdout, once it exited 0 (or, with ``runs_left_ok``, 4: it stopped while
    another live worker still trained a run, and says so)."""
    out, err = proc.communicate(timeout=timeout)
    ok = (0, EXIT_RUNS_LEFT) if runs_left_ok else (0,)
    assert proc.returncode in ok, f"worker failed ({proc.returncode}):\n{out[-2000:]}\n{err[-4000:]}"
    assert (proc.returncode == EXIT_RUNS_LEFT) == ("still running or pending" in out), out[-2000:]
    return out


def check_trained_once(workdir, plans):
    """Every run finished once: one 'done' record, each step logged once, no claim left."""
    trainers = {}
    for p in plans:
        events = read_jsonl(workdir / p.name / "attempts.jsonl")
        done = [e for e in events if e["event"] == "done"]
        assert len(done) == 1, f"{p.name} finished {len(done)} times: {events}"
        trainers[p.name] = [e["worker"] for e in events if e["event"] == "start"]
        steps = [r["step"] for r in read_jsonl(workdir / p.name / "metrics.jsonl")]
        assert steps == sorted(set(steps)) and steps[-1] == p.steps, f"{p.name}: steps {steps}"
    rows = read_jsonl(workdir / "results.jsonl")
    assert sorted(r["run"] for r in rows) == sorted(p.name for p in plans)
    assert not [f for f in os.listdir(workdir / "claims") if f.endswith(".claim")]
    return trainers


def test_two_workers_at_once_train_every_run_exactly_once(tmp_path):
    plans = plan_sweep(get_config("tiny"))
    a = start_worker(tmp_path, "A", "--heartbeat_s=1", "--claim_timeout_s=30")
    b = start_worker(tmp_path, "B", "--heartbeat_s=1", "--claim_timeout_s=30")
    out_a, out_b = finish(a, runs_left_ok=True), finish(b, runs_left_ok=True)
    assert a.returncode == 0 or b.returncode == 0, "the worker finishing the last run exits 0"
    out = out_a + out_b
    trainers = check_trained_once(tmp_path, plans)
    assert all(len(w) == 1 for w in trainers.values()), f"a run was started twice: {trainers}"
    assert {w[0] for w in trainers.values()} == {"A", "B"}, f"both workers should train: {trainers}"
    assert (tmp_path / "loss_vs_compute.png").stat().st_size > 10_000
    assert "L = " in out, "the worker finishing the last run writes the figure and the fits"
    status = run_cli("experiments.sweep", SWEEP, f"--workdir={tmp_path}", "--status", check=True)
    states = [l.split()[1] for l in status.stdout.splitlines() if l.split()[:1] in [[p.name] for p in plans]]
    assert states == ["done"] * len(plans), status.stdout


# slow (~30 s): tests/test_faults.py covers a SIGKILLed worker's dead claim being
# taken over at once, with exact losses, in ~12 s.
@pytest.mark.slow
def test_killed_worker_run_is_taken_over_and_sweep_completes(tmp_path):
    plans = plan_sweep(get_config("tiny"))
    a = start_worker(tmp_path, "A", *FAST_CLAIMS)
    first = tmp_path / plans[0].name / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and a.poll() is None:
        ckpts = first.parent / "checkpoints"
        if ckpts.exists() and any(n.isdigit() for n in os.listdir(ckpts)) and \
                any(r["step"] >= 12 for r in read_jsonl(first)):
            a.send_signal(signal.SIGKILL)   # after the checkpoint at step 10 is complete
            break
        time.sleep(0.02)
    assert a.wait() == -signal.SIGKILL, "worker A finished before it could be killed"
    a.communicate()
    # A's process is gone: its claim on this host is dead at once (no timeout to wait for).
    status = run_cli("experiments.sweep", SWEEP, f"--workdir={tmp_path}", "--status", check=True)
    line = status.stdout.split(plans[0].name)[1].splitlines()[0]
    assert "dead" in line and "worker A" in line and "resumes from step" in line, status.stdout

    finish(start_worker(tmp_path, "A2", *FAST_CLAIMS))
    trainers = check_trained_once(tmp_path, plans)
    assert trainers[plans[0].name] == ["A", "A2"]
    starts = [e for e in read_jsonl(tmp_path / plans[0].name / "attempts.jsonl") if e["event"] == "start"]
    assert starts[1]["from_step"] >= 10, "the takeover resumes from A's checkpoint"
    assert all(w == ["A2"] for n, w in trainers.items() if n != plans[0].name)


def test_workers_with_different_sweep_configs_on_one_directory(tmp_path):
    check_sweep_dir(get_config("tiny"), str(tmp_path))
    before = (tmp_path / "sweep.json").read_text()
    proc = run_cli("experiments.sweep", SWEEP, f"--workdir={tmp_path}",
                   "--config.base.train.lr=1e-3", timeout=120)
    assert proc.returncode == 2 and "belongs to a sweep with a different config" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "sweep.json").read_text() == before
    assert sorted(os.listdir(tmp_path)) == ["sweep.json"] or "claims" in os.listdir(tmp_path)
