"""SIGTERM: checkpoint at the next step boundary, exit 75, resume on the same trajectory."""
import os

import pytest

from tests.helpers import popen, read_jsonl, signal_when, tiny_overrides
from tests.test_train import assert_same_losses, losses, train_cli

EXIT_PREEMPTED = 75


def test_sigterm_checkpoints_exits_75_and_resume_matches_uninterrupted(tmp_path):
    extra = ["--config.train.steps=200", "--config.train.checkpoint_every=100",
             "--config.train.log_every=1", "--config.eval.points=8"]
    ref = tmp_path / "ref"
    train_cli(ref, *extra)

    term = tmp_path / "term"
    proc = popen("experiments.train", "--config=configs/lm.py:tiny", f"--workdir={term}",
                 *tiny_overrides(), *extra)
    rc, _, err = signal_when(proc, term / "metrics.jsonl", 120)
    assert rc == EXIT_PREEMPTED, err[-3000:]
    assert "preempted: checkpoint saved at step" in err and "Traceback" not in err
    assert not (term / "result.json").exists()
    kept = sorted(int(p) for p in os.listdir(term / "checkpoints") if p.isdigit())
    last_logged = read_jsonl(term / "metrics.jsonl")[-1]["step"]
    assert 120 <= kept[-1] < 200 and kept[-1] % 100, f"checkpoints {kept}: not at the SIGTERM step"
    assert kept[-1] == last_logged, "the checkpoint is at the step boundary after SIGTERM"

    train_cli(term, *extra)   # resumes from the preemption checkpoint
    assert (term / "result.json").exists()
    assert_same_losses(losses(term), losses(ref), rtol=1e-6)


# slow (~19 s): tests/test_faults.py stops a sweep worker by Ctrl-C through the same
# handler and checks the released claim and the resume.
@pytest.mark.slow
def test_sigterm_stops_sweep_worker_and_releases_its_claim(tmp_path):
    args = ["--config=configs/scaling.py:tiny", f"--workdir={tmp_path}", "--config.arms=full",
            "--heartbeat_s=0.5", "--claim_timeout_s=600"]
    run = tmp_path / "full_t1_6e08"
    rc, _, err = signal_when(popen("experiments.sweep", *args, "--worker_id=A"),
                             run / "metrics.jsonl", 4)
    assert rc == EXIT_PREEMPTED, err[-3000:]
    assert not [f for f in os.listdir(tmp_path / "claims") if f.endswith(".claim")], \
        "a preempted worker must release its claim (no claim timeout to wait for)"
    stopped = [e for e in read_jsonl(run / "attempts.jsonl") if e["event"] == "preempted"]
    assert len(stopped) == 1 and stopped[0]["step"] < 47

    proc = popen("experiments.sweep", *args, "--worker_id=B")
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    starts = [e for e in read_jsonl(run / "attempts.jsonl") if e["event"] == "start"]
    assert [(e["worker"], e["from_step"]) for e in starts] == [("A", 0), ("B", stopped[0]["step"])]
    steps = [r["step"] for r in read_jsonl(run / "metrics.jsonl")]
    assert steps == sorted(set(steps)) and steps[-1] == 47
    assert len(read_jsonl(tmp_path / "results.jsonl")) == 2
