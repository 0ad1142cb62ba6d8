"""Every failure class of issue 12, each in a subprocess: exit code, stderr lines, the
named field or path, and what is (and is not) on disk afterwards.

- a killed worker (SIGKILL): its claim is taken over at once, resumed losses equal an
  uninterrupted run's; Ctrl-C: checkpoint, one line, exit 130 (twice: exit at once);
  runs left to live workers: exit 4;
- a bad config: one line ``error: <field>: ...; <fix>``, exit 2, nothing written;
- read-only, permission-denied and full directories: one line naming the path, exit 74,
  nothing partial, the same command resumes once fixed;
- failed runs: exit 3, each named with its cause; ``--retry_failed`` after a fix.

The uninterrupted reference is the session's finished tiny sweep (``tiny_sweep_dir``);
most cases train its one run ``full_t1_6e08`` (~5 s). SIGTERM is in
tests/test_preemption.py, divergence in tests/test_train.py.
"""
import json
import os
import shutil
import signal
import socket
import time

from moba_jax.sweep import claims
from tests.helpers import popen, read_jsonl, run_cli, signal_when
from tests.test_train import assert_same_losses, losses

RUN = "full_t1_6e08"
ONE_RUN = ["--config=configs/scaling.py:tiny", "--config.arms=full", "--config.sizes=t1",
           "--config.budgets=6e8"]
EXIT_RUNS_LEFT, EXIT_INTERRUPTED = 4, 130


def claim_files(workdir):
    return [f for f in os.listdir(workdir / "claims") if f.endswith(".claim")]


def kill_after_checkpoint(proc, run_dir, sig=signal.SIGKILL, timeout=120):
    """Sends ``sig`` once the run has a checkpoint and has logged a step past it."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        ckpts = run_dir / "checkpoints"
        if ckpts.exists() and any(n.isdigit() for n in os.listdir(ckpts)) and \
                (run_dir / "metrics.jsonl").exists() and \
                any(r["step"] >= 12 for r in read_jsonl(run_dir / "metrics.jsonl", live=True)):
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    return proc.communicate(timeout=timeout)


def test_sigkilled_sweep_is_finished_by_one_rerun_with_uninterrupted_losses(tmp_path, tiny_sweep_dir):
    args = ["experiments.sweep", *ONE_RUN, f"--workdir={tmp_path}"]
    proc = popen(*args, "--worker_id=A")
    kill_after_checkpoint(proc, tmp_path / RUN)
    assert proc.returncode == -signal.SIGKILL, "the worker finished before it could be killed"
    assert claim_files(tmp_path) == [f"{RUN}.claim"], "a SIGKILL leaves its claim behind"

    # --status without --config (sweep.json pins it): the claim's process is gone.
    status = run_cli("experiments.sweep", f"--workdir={tmp_path}", "--status", check=True)
    line = status.stdout.split(RUN)[1].splitlines()[0]
    assert line.split()[0] == "dead" and "worker A" in line and "resumes from step" in line, \
        status.stdout

    # One re-run of the same command, default 600 s claim timeout: taken over at once.
    t0 = time.time()
    again = run_cli(*args, "--worker_id=B", "--progress_every_s=0.3", check=True)
    assert time.time() - t0 < 120
    assert "taking over the claim of A (its process is gone)" in again.stderr
    assert f"[1/1] {RUN}: step " in again.stdout, "no progress lines with train.progress=False"
    starts = [e for e in read_jsonl(tmp_path / RUN / "attempts.jsonl") if e["event"] == "start"]
    assert [e["worker"] for e in starts] == ["A", "B"] and starts[1]["from_step"] >= 10
    assert not claim_files(tmp_path)
    assert (tmp_path / RUN / "result.json").exists()
    assert_same_losses(losses(tmp_path / RUN), losses(tiny_sweep_dir / RUN), rtol=1e-6)


def test_ctrl_c_checkpoints_exits_130_and_resume_matches_uninterrupted(tmp_path, tiny_sweep_dir):
    args = ["experiments.sweep", *ONE_RUN, f"--workdir={tmp_path}"]
    rc, _, err = signal_when(popen(*args), tmp_path / RUN / "metrics.jsonl", 4, sig=signal.SIGINT)
    assert rc == EXIT_INTERRUPTED, err[-3000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted: checkpoint saved at step") \
        and "run the same command again to resume" in lines[0], lines
    assert not claim_files(tmp_path), "an interrupted worker releases its claim"
    assert not (tmp_path / RUN / "result.json").exists()
    kept = max(int(n) for n in os.listdir(tmp_path / RUN / "checkpoints") if n.isdigit())
    # The run logs every 2 steps (as the uninterrupted reference does), so the step
    # boundary after Ctrl-C may be one that was not logged: no log lies beyond it.
    last_logged = read_jsonl(tmp_path / RUN / "metrics.jsonl")[-1]["step"]
    assert 4 <= last_logged <= kept <= last_logged + 1, \
        f"checkpoint at step {kept}, last log at {last_logged}: not the step boundary after Ctrl-C"

    run_cli(*args, check=True)
    assert_same_losses(losses(tmp_path / RUN), losses(tiny_sweep_dir / RUN), rtol=1e-6)


def test_second_ctrl_c_exits_at_once(tmp_path):
    proc = popen("experiments.sweep", *ONE_RUN, f"--workdir={tmp_path}")
    metrics = tmp_path / RUN / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not metrics.exists():
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED and time.time() - t0 < 5, err[-3000:]
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("second Ctrl-C: exiting now"), lines
    assert not (tmp_path / RUN / "result.json").exists()


def test_runs_owned_by_a_live_worker_exit_4(tmp_path):
    (tmp_path / "claims").mkdir()
    me = claims.owner_identity()     # this test process: alive, on this host
    (tmp_path / "claims" / f"{RUN}.claim").write_text(json.dumps({"owner": "T", **me}))
    proc = run_cli("experiments.sweep", *ONE_RUN, f"--workdir={tmp_path}", timeout=120)
    assert proc.returncode == EXIT_RUNS_LEFT, proc.stderr[-3000:]
    assert "1 runs still running or pending (full_t1_6e08)" in proc.stdout
    assert not (tmp_path / RUN).exists(), "a run claimed by a live worker is left alone"
    assert not (tmp_path / "loss_vs_compute.png").exists()


def test_claim_states_and_the_readers_timeout(tmp_path):
    me = claims.owner_identity()
    fresh, old = {"age_s": 1.0}, {"age_s": 10.0}
    assert claims.claim_state({**me, **old, "timeout_s": 600}, 5) == "live"   # alive: no timeout
    reused = {**me, **fresh, "start_ticks": (me["start_ticks"] or 0) + 1}
    assert claims.claim_state(reused, 600) == "dead"          # the PID now names a younger process
    gone = {**me, **fresh, "pid": 2 ** 22 + 1}
    assert claims.claim_state(gone, 600) == "dead"
    other = {**me, "host": socket.gethostname() + "-other"}
    # Another host: the reader's timeout applies, not the 600 s the owner recorded.
    assert claims.claim_state({**other, **old, "timeout_s": 600}, 5) == "stale"
    assert claims.claim_state({**other, **fresh, "timeout_s": 600}, 5) == "live"
    proc = run_cli("experiments.sweep", *ONE_RUN, f"--workdir={tmp_path}", "--claim_timeout_s=5",
                   "--heartbeat_s=3", timeout=60)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "--claim_timeout_s=5 must exceed twice --heartbeat_s=3" in proc.stderr
    assert not os.listdir(tmp_path)


def test_library_callers_keep_their_ctrl_c():
    """Only the command-line entry points take over SIGINT: a notebook that calls
    ``train`` keeps its own interrupt (KeyboardInterrupt), and SIGTERM is still caught."""
    import signal

    from moba_jax import distributed
    distributed.install_preemption_handler()
    assert signal.getsignal(signal.SIGINT) is not distributed._on_signal
    assert signal.getsignal(signal.SIGTERM) is distributed._on_signal


# --- one validation pass: one line, exit 2, nothing written ----------------------------

def assert_one_line_error(proc, *needles):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), \
        (proc.returncode, proc.stderr[-3000:])
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


def test_unknown_field_names_the_closest_one(tmp_path):
    proc = run_cli("experiments.train", "--config=configs/lm.py:tiny", f"--workdir={tmp_path}/run",
                   "--config.train.stepz=5", timeout=120)
    assert_one_line_error(proc, "--config.train.stepz: no such field",
                          "did you mean --config.train.steps?")
    assert not os.listdir(tmp_path)


def test_bad_value_in_a_sweep_is_refused_by_dry_run_and_names_its_sweep_field(tmp_path):
    proc = run_cli("experiments.sweep", "--config=configs/scaling.py:tiny", "--dry_run",
                   "--config.arm_defs.moba.attention.moba.top_k=0", timeout=120)
    assert_one_line_error(proc, "arm_defs.moba.attention.moba.top_k: 0 is not positive",
                          "run moba_t1_6e08", "--config.arm_defs.moba.attention.moba.top_k=3")
    assert not proc.stdout.strip(), "no plan is printed for a config that cannot train"
    proc = run_cli("experiments.sweep", "--config=configs/scaling.py:tiny",
                   f"--workdir={tmp_path}", "--config.arm_defs.moba.attention.moba.block_size=0",
                   timeout=120)
    assert_one_line_error(proc, "arm_defs.moba.attention.moba.block_size: 0 is not positive")
    assert not os.listdir(tmp_path)


def test_negative_learning_rate_is_refused_before_any_work(tmp_path):
    proc = run_cli("experiments.train", "--config=configs/lm.py:tiny", f"--workdir={tmp_path}/run",
                   "--config.train.lr=-0.003", timeout=120)
    assert_one_line_error(proc, "train.lr: -0.003 is not positive")
    assert not os.listdir(tmp_path)


# --- read-only, permission-denied and full directories ---------------------------------
# Injected at the Python boundary (tests/fault_inject.py): the tests run as root.

def run_with_fault(fault, folder, module, *args, skip=0, timeout=300):
    return run_cli("tests.fault_inject", fault, str(folder), str(skip), module, *args,
                   timeout=timeout)


def snapshot(folder):
    """Every file under ``folder`` with its size and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def leftovers(folder):
    return [str(p) for p in folder.rglob("*") if p.name.endswith(".tmp") or ".partial" in p.name
            or "orbax-checkpoint-tmp" in p.name]


def assert_fault_line(proc, path, cause):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 74 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
    assert lines[0].startswith(f"error: cannot write {path}") and cause in lines[0], lines[0]


def test_finished_sweep_in_a_read_only_directory_reruns_reports_and_evaluates(tmp_path, tiny_sweep_dir):
    sweep = tmp_path / "sweep"
    shutil.copytree(tiny_sweep_dir, sweep, ignore=shutil.ignore_patterns("report", "eval"))
    before = snapshot(sweep)
    again = run_with_fault("EROFS", sweep, "experiments.sweep", "--config=configs/scaling.py:tiny",
                           f"--workdir={sweep}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished, skipped" in again.stdout and "(up to date)" in again.stdout
    assert snapshot(sweep) == before, "re-running a finished sweep must write nothing"

    report = run_with_fault("EROFS", sweep, "experiments.report", f"--workdir={sweep}",
                            "--bootstrap=0")
    assert_fault_line(report, sweep, "Read-only file system")
    assert "--out=DIR" in report.stderr

    run = sorted(p for p in sweep.iterdir() if (p / "result.json").exists())[0]
    ev = run_with_fault("EROFS", sweep, "experiments.evaluate", f"--workdir={sweep}",
                        f"--out={tmp_path / 'evals'}", "--config.max_docs=4")
    assert ev.returncode == 0, ev.stderr[-3000:]
    assert list((tmp_path / "evals" / run.name / "eval").glob("step_*.json"))
    out = run_with_fault("EROFS", sweep, "experiments.report", f"--workdir={sweep}",
                         f"--out={tmp_path / 'report'}", f"--evals={tmp_path / 'evals'}",
                         "--bootstrap=0")
    assert out.returncode == 0, out.stderr[-3000:]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "No position-wise evaluations found" not in text, "the report missed --evals"
    assert snapshot(sweep) == before and not leftovers(tmp_path)


def test_permission_denied_workdir_is_one_line_and_leaves_nothing(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    proc = run_with_fault("EACCES", locked, "experiments.train", "--config=configs/lm.py:tiny",
                          f"--workdir={locked / 'run'}")
    assert_fault_line(proc, locked / "run", "Permission denied")
    assert not os.listdir(locked)


def test_full_disk_stops_cleanly_and_the_same_command_resumes_to_identical_losses(tmp_path, tiny_sweep_dir):
    args = ["experiments.sweep", *ONE_RUN, f"--workdir={tmp_path}"]
    proc = run_with_fault("ENOSPC", tmp_path, *args, skip=1)   # the first checkpoint fits
    assert_fault_line(proc, tmp_path / RUN / "checkpoints", "No space left on device")
    assert "then run the same command again to resume" in proc.stderr
    assert not leftovers(tmp_path) and not claim_files(tmp_path)
    assert not (tmp_path / RUN / "result.json").exists()
    assert not (tmp_path / RUN / "failed.json").exists(), "a full disk is not the run's failure"
    assert [n for n in os.listdir(tmp_path / RUN / "checkpoints") if n.isdigit()] == ["10"]

    run_cli(*args, check=True)
    starts = [e for e in read_jsonl(tmp_path / RUN / "attempts.jsonl") if e["event"] == "start"]
    assert starts[-1]["from_step"] == 10
    assert_same_losses(losses(tmp_path / RUN), losses(tiny_sweep_dir / RUN), rtol=1e-6)


def test_records_are_whole_or_absent(tmp_path, monkeypatch):
    """In-process: a write cut short leaves the old content and no temporary file; a
    metrics line cut short by a kill is dropped when the run resumes."""
    import errno as errno_

    from moba_jax import fileio
    from moba_jax.train import metrics as mx
    target = tmp_path / "result.json"
    fileio.write_json(str(target), {"old": 1})

    def cut(f):
        f.write('{"new": ')
        raise OSError(errno_.ENOSPC, "No space left on device", str(target))
    try:
        fileio.write_atomic(str(target), cut)
    except OSError as e:
        assert fileio.filesystem_fault(e) is e
    assert json.loads(target.read_text()) == {"old": 1} and os.listdir(tmp_path) == ["result.json"]

    log = tmp_path / "metrics.jsonl"
    w = mx.MetricsWriter(str(log), enabled=True)
    for s in (1, 2, 3):
        w.write({"step": s, "train_loss": 1.0})
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:5]) and
                        (_ for _ in ()).throw(OSError(errno_.ENOSPC, "full")))
    try:
        w.write({"step": 4, "train_loss": 1.0})
    except OSError:
        pass
    monkeypatch.setattr(os, "write", real_write)
    assert [r["step"] for r in mx.read_metrics(str(log))] == [1, 2, 3], "no half line on disk"
    with open(log, "a") as f:
        f.write('{"step": 4, "tra')          # a SIGKILL mid-write (not through the writer)
    w.truncate_after(2)
    assert [r["step"] for r in mx.read_metrics(str(log))] == [1, 2]


# --- failed runs: exit 3, named; --retry_failed after a fix -----------------------------

SWEEP = "--config=configs/scaling.py:tiny"
EXIT_FAILED_RUNS = 3


# One size diverges through its own lr (no arm of the tiny config has a train override to
# break); fixing that lr changes the failed run's config and no other run's.
TWO_SIZES = ["--config.arms=full", "--config.sizes=t1,t2", "--config.budgets=2e8,4e8",
             "--config.base.train.grad_clip=0", "--config.base.train.warmup_frac=0.0"]


def test_retry_failed_accepts_a_fix_that_changes_only_the_failed_run(tmp_path):
    """~25 s: the broken sweep (one run diverges: exit 3, named with its cause, skipped
    when relaunched without --retry_failed), then the fix with --retry_failed."""
    args = ["experiments.sweep", SWEEP, f"--workdir={tmp_path}", *TWO_SIZES]
    broken = run_cli(*args, "--config.size_defs.t1.lr=1e30", timeout=120)
    assert broken.returncode == EXIT_FAILED_RUNS, broken.stderr[-3000:]
    assert "Traceback" not in broken.stderr, "a failed run's traceback goes to its failed.json"
    bad, good = "full_t1_2e08", "full_t2_4e08"
    failed = json.load(open(tmp_path / bad / "failed.json"))
    assert "TrainingDivergedError" in failed["error"] and "diverged" in failed["error"]
    assert "Traceback (most recent call last)" in failed["traceback"]
    # The summary names the failed run with its one-line cause; one surviving run fits no law.
    assert f"1 runs failed: {bad}: TrainingDivergedError: " in broken.stdout
    assert "Full Attention: not fitted: 1 runs" in broken.stdout
    assert "Full Attention: incomplete: 1 of 2 planned runs finished" in broken.stdout
    assert "Full Attention: L = " not in broken.stdout
    again = run_cli(*args, "--config.size_defs.t1.lr=1e30", timeout=120)
    assert again.returncode == EXIT_FAILED_RUNS and "failed earlier, skipped" in again.stdout
    status = run_cli("experiments.sweep", f"--workdir={tmp_path}", "--status", check=True)
    assert status.stdout.split(bad)[1].split()[0] == "failed", status.stdout
    finished = (tmp_path / good / "result.json").stat().st_mtime_ns
    old = json.load(open(tmp_path / "sweep.json"))["fingerprint"]

    fixed = run_cli(*args, "--retry_failed", timeout=120)
    assert fixed.returncode == 0, fixed.stderr[-3000:]
    assert "sweep.json now pins the changed config (size_defs.t1.lr: 1e+30 -> 0.005" in fixed.stdout
    assert f"{good}: finished, skipped" in fixed.stdout
    assert f"{bad}: config changed since it last trained; restarting from scratch" in fixed.stdout
    assert (tmp_path / good / "result.json").stat().st_mtime_ns == finished
    assert [e["event"] for e in read_jsonl(tmp_path / good / "attempts.jsonl")] == ["start", "done"]
    events = read_jsonl(tmp_path / bad / "attempts.jsonl")
    assert [e["event"] for e in events] == ["start", "failed", "retired", "start", "done"]
    assert events[2]["moved_to"] == "retired/1" and events[3]["from_step"] == 0
    retired = tmp_path / bad / "retired" / "1"
    assert {"failed.json", "config.json", "metrics.jsonl"} <= set(os.listdir(retired))
    assert not (tmp_path / bad / "failed.json").exists()
    assert read_jsonl(tmp_path / bad / "metrics.jsonl")[0]["step"] == 1, "trained from scratch"
    pin = json.load(open(tmp_path / "sweep.json"))
    history = [(h["fingerprint"], h["changed"]) for h in pin["history"]]
    assert history == [(old, ["size_defs.t1.lr"])]

    # sweep.json now pins the fixed config: --status (config read from it) shows both done.
    status = run_cli("experiments.sweep", f"--workdir={tmp_path}", "--status", check=True)
    assert "2 runs: 2 done" in status.stdout, status.stdout


def test_a_change_to_finished_runs_is_refused_with_or_without_retry_failed(tmp_path,
                                                                           tiny_sweep_dir):
    """~5 s (given the session's tiny sweep): nothing is trained or written."""
    wd = tmp_path / "sweep"
    shutil.copytree(tiny_sweep_dir, wd)
    before = snapshot(wd)
    args = ["experiments.sweep", SWEEP, f"--workdir={wd}", "--config.size_defs.t2.lr=1e-3"]
    plain = run_cli(*args, timeout=120)
    assert plain.returncode == 2, plain.stderr[-3000:]
    assert plain.stderr.strip().splitlines() == [
        f"error: {wd} belongs to a sweep with a different config (size_defs.t2.lr: 0.005 -> "
        "0.001); --retry_failed accepts a change that alters only failed or unstarted runs; "
        "otherwise use a fresh --workdir, or the exact --config and overrides of the workers "
        "already using it"]
    retry = run_cli(*args, "--retry_failed", timeout=120)
    assert retry.returncode == 2, retry.stderr[-3000:]
    assert retry.stderr.strip().splitlines() == [
        f"error: --retry_failed accepts a config change only where it alters failed or unstarted "
        f"runs, but in {wd} it alters full_t2_2e09 (done; size_defs.t2.lr: 0.005 -> 0.001), "
        "moba_t2_2e09 (done; size_defs.t2.lr: 0.005 -> 0.001); revert the change, use a fresh "
        "--workdir, or delete those runs' directories (planned ones then train afresh with the "
        "new config)"]
    assert snapshot(wd) == before
