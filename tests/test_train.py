"""Training: mesh equivalence, resume after SIGKILL, restore on other meshes, guards."""
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REPO, popen, read_jsonl, run_cli, signal_when, tiny_overrides


def train_cli(workdir, *extra, devices=1, check=True):
    return run_cli("experiments.train", "--config=configs/lm.py:tiny", f"--workdir={workdir}",
                   *tiny_overrides(), *extra, devices=devices, check=check)


def losses(workdir):
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in
            read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def assert_same_losses(a, b, rtol):
    assert [s for s, *_ in a] == [s for s, *_ in b]
    for (s, la, va), (_, lb, vb) in zip(a, b):
        np.testing.assert_allclose(la, lb, rtol=rtol, err_msg=f"train loss at step {s}")
        assert (va is None) == (vb is None)
        if va is not None:
            np.testing.assert_allclose(va, vb, rtol=rtol, err_msg=f"val loss at step {s}")


@pytest.fixture(scope="module")
def four_device_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("mesh4")
    train_cli(d, "--config.mesh.data=2", "--config.mesh.fsdp=2", devices=4)
    return d


def test_4_device_mesh_matches_1_device(four_device_run, tmp_path):
    one = tmp_path / "mesh1"
    train_cli(one, devices=1)
    cfg = json.load(open(four_device_run / "config.json"))
    assert cfg["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1} and cfg["devices"] == 4
    assert_same_losses(losses(four_device_run), losses(one), rtol=2e-5)


RESTORE_EVAL = """
import json, sys
from moba_jax import sharding as shd
from moba_jax.data import build_datasets
from moba_jax.train.restore import load_run
from moba_jax.train.loop import evaluate
from moba_jax.train.step import jit_eval_step
from jax.sharding import NamedSharding, PartitionSpec as P
data, fsdp = int(sys.argv[2]), int(sys.argv[3])
mesh = shd.make_mesh(data=data, fsdp=fsdp)
run = load_run(sys.argv[1], mesh=mesh)
c = run.config
ds = build_datasets(c.data, seq_len=c.train.seq_len, global_batch=c.train.global_batch, seed=c.train.seed)
bs = NamedSharding(mesh, P(("data", "fsdp"), None))
from moba_jax.train.state import param_shardings
with shd.activation_sharding(mesh):
    fn = jit_eval_step(run.spec, param_shardings(run.spec, mesh), bs)
    print(json.dumps({"step": run.step, "val": evaluate(fn, run.params, ds.val_batches(c.eval.batches), bs)}))
"""


@pytest.mark.parametrize("devices,data,fsdp", [(1, 1, 1), (2, 1, 2)])
def test_restore_on_other_mesh(four_device_run, devices, data, fsdp):
    proc = subprocess.run(
        [sys.executable, "-c", RESTORE_EVAL, str(four_device_run), str(data), str(fsdp)],
        cwd=REPO, capture_output=True, text=True,
        env={**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    final = [r for r in read_jsonl(four_device_run / "metrics.jsonl") if "val_loss" in r][-1]
    assert out["step"] == final["step"]
    np.testing.assert_allclose(out["val"], final["val_loss"], rtol=1e-5)


def test_val_lines_carry_a_standard_error(four_device_run):
    """Every evaluation logs ``val_loss_se`` > 0 beside ``val_loss``; the run summary
    repeats the last one as ``final_val_loss_se``."""
    vals = [r for r in read_jsonl(four_device_run / "metrics.jsonl") if "val_loss" in r]
    assert vals and all(r["val_loss_se"] > 0 and np.isfinite(r["val_loss_se"]) for r in vals)
    # Well below the loss itself (the tiny run's 16 held-out sequences give a few %).
    assert all(r["val_loss_se"] < 0.2 * r["val_loss"] for r in vals)
    result = json.load(open(four_device_run / "result.json"))
    assert result["final_val_loss_se"] == vals[-1]["val_loss_se"]


def test_mfu_on_every_line_against_a_measured_cpu_peak(four_device_run):
    """On CPU the peak is a float32 matmul measured at start-up, recorded in config.json
    (split over the 4 simulated devices); every metrics line has MFU from compiled FLOPs."""
    cfg = json.load(open(four_device_run / "config.json"))
    peak = cfg["peak_flops_per_device"]
    assert peak > 1e8 and "measured" in cfg["peak_flops_source"] and "4 CPU" in cfg["peak_flops_source"]
    lines = read_jsonl(four_device_run / "metrics.jsonl")
    compiled = cfg["train_flops_per_token"]["compiled"]
    for r in lines:
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * compiled / (peak * cfg["devices"]))
        assert 0 < r["mfu"] < 1


def test_eval_step_standard_error_matches_numpy():
    """The jitted eval step and :func:`evaluate_with_se` on two known batches (fixed
    logits, one short row, one all-PAD fill row) against the same numbers in numpy."""
    import types

    import jax
    from jax.sharding import NamedSharding, PartitionSpec as P

    from moba_jax import sharding as shd
    from moba_jax.train.loop import evaluate, evaluate_with_se
    from moba_jax.train.step import jit_eval_step, sequence_standard_error

    rng = np.random.default_rng(0)
    B, T, V = 4, 6, 5
    logits = rng.normal(size=(2, B, T, V)).astype(np.float32) * 2
    spec = types.SimpleNamespace(apply=lambda params, inputs, positions: params["logits"][inputs[0, 0]])
    batches, masks = [], []
    for i in range(2):
        mask = np.ones((B, T), np.float32)
        if i == 1:
            mask[1, 4:] = 0          # a short row
            mask[3] = 0              # the all-PAD fill row of a last batch
        inputs = np.full((B, T), i, np.int32)    # selects batch i's logits
        targets = rng.integers(0, V, size=(B, T)).astype(np.int32)
        batches.append({"inputs": inputs, "targets": targets, "loss_mask": mask,
                        "positions": np.tile(np.arange(T, dtype=np.int32), (B, 1))})
        masks.append(mask)
    mesh = shd.make_mesh(1, 1, 1)
    bs = NamedSharding(mesh, P(("data", "fsdp"), None))
    params = {"logits": logits}
    fn = jit_eval_step(spec, {"logits": NamedSharding(mesh, P())}, bs)
    loss, se = evaluate_with_se(fn, params, batches, bs)

    x = logits.astype(np.float64)
    logp = x - np.log(np.exp(x).sum(-1, keepdims=True))
    tok = -np.stack([np.take_along_axis(logp[i], b["targets"][..., None], -1)[..., 0]
                     for i, b in enumerate(batches)])                       # [2, B, T]
    m = np.stack(masks)
    sums, counts = (tok * m).sum(-1).ravel(), m.sum(-1).ravel()
    keep = counts > 0
    np.testing.assert_allclose(loss, (tok * m).sum() / m.sum(), rtol=1e-6)
    assert evaluate(fn, params, batches, bs) == loss
    # Ratio-estimator SE over the 7 rows with tokens, written with per-row means.
    means, n, k = sums[keep] / counts[keep], counts[keep], keep.sum()
    want = np.sqrt(k / (k - 1) * np.sum(n ** 2 * (means - loss) ** 2)) / n.sum()
    np.testing.assert_allclose(se, want, rtol=1e-5)
    # Rows of equal length: the plain std(per-row mean, ddof=1) / sqrt(rows).
    full = sums[:B] / T
    np.testing.assert_allclose(sequence_standard_error(sums[:B], counts[:B]),
                               np.std(full, ddof=1) / np.sqrt(B), rtol=1e-12)
    assert sequence_standard_error([3.0], [2.0]) is None and sequence_standard_error([], []) is None


# slow (~21 s): the same checkpoint-resume path is covered through the sweep by
# tests/test_faults.py (SIGKILL, Ctrl-C) and by the SIGTERM test of test_preemption.py.
@pytest.mark.slow
def test_sigkill_resume_matches_uninterrupted(tmp_path):
    extra = ["--config.train.steps=300", "--config.train.checkpoint_every=20",
             "--config.train.log_every=1", "--config.eval.points=8"]
    ref = tmp_path / "ref"
    train_cli(ref, *extra)

    killed = tmp_path / "killed"
    proc = popen("experiments.train", "--config=configs/lm.py:tiny", f"--workdir={killed}",
                 *tiny_overrides(), *extra)
    metrics = killed / "metrics.jsonl"
    signal_when(proc, metrics, 130, sig=signal.SIGKILL, timeout=300)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (killed / "result.json").exists(), "a killed run must not look finished"
    last_logged = read_jsonl(metrics)[-1]["step"]
    assert last_logged < 300

    train_cli(killed, *extra)   # resumes from the latest checkpoint
    assert (killed / "result.json").exists()
    assert_same_losses(losses(killed), losses(ref), rtol=1e-6)


def test_grad_accumulation_matches_full_batch(tmp_path):
    a, b = tmp_path / "a1", tmp_path / "a2"
    train_cli(a, "--config.train.steps=10")
    train_cli(b, "--config.train.steps=10", "--config.train.grad_accum=2")
    assert_same_losses(losses(a), losses(b), rtol=2e-5)


def test_divergence_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    d = tmp_path / "nan"
    proc = train_cli(d, "--config.train.lr=1e30", "--config.train.grad_clip=0",
                     "--config.train.warmup_frac=0.0", "--config.train.checkpoint_every=1",
                     check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "training diverged at step" in proc.stderr and "last good checkpoint" in proc.stderr
    assert not (d / "result.json").exists()
    kept = sorted(int(p) for p in os.listdir(d / "checkpoints") if p.isdigit())
    assert kept, "the last good checkpoint must be kept"
    logged = read_jsonl(d / "metrics.jsonl")
    assert all(np.isfinite(r["train_loss"]) for r in logged if r["step"] <= kept[-1])


def test_divergence_before_any_checkpoint_is_one_line_naming_the_step(tmp_path):
    """Diverged before the first checkpoint: the one stderr line names the step whose loss
    went non-finite (not "step None") and what to change."""
    d = tmp_path / "nan_early"
    proc = train_cli(d, "--config.train.lr=1e6", "--config.train.checkpoint_every=1000",
                     check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    m = re.match(r"error: training diverged at step (\d+): train loss is (nan|-?inf); "
                 r"no checkpoint was saved before it .*Lower train\.lr", lines[0])
    assert m and "None" not in lines[0], lines[0]
    step = int(m.group(1))
    logged = [r["step"] for r in read_jsonl(d / "metrics.jsonl")]
    assert 1 <= step and all(s < step for s in logged), (step, logged)


# Runs experiments.train with one Python warning raised inside its main, after the CLI
# has set up its output: the warning must come out as one line, like everything else.
_WARN_THEN_TRAIN = """
import runpy, sys, warnings
import moba_jax.train.loop as loop
real_train = loop.train
def train(*args, **kwargs):
    warnings.warn("a warning raised during training", UserWarning)
    return real_train(*args, **kwargs)
loop.train = train
sys.argv = ["experiments.train", *sys.argv[1:]]
runpy.run_module("experiments.train", run_name="__main__", alter_sys=True)
"""


def test_train_cli_stderr_is_clean(tmp_path):
    """No absl ``I1126 12:00:00.000 123 file.py:1]`` lines, no source line echoed under a
    warning: a tiny run's stderr is exactly the one-line warning it raised."""
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": "1", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        [sys.executable, "-c", _WARN_THEN_TRAIN, "--config=configs/lm.py:tiny",
         f"--workdir={tmp_path / 'run'}", *tiny_overrides(), "--config.train.steps=5"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("done: 5 steps"), proc.stdout
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert not [l for l in lines if re.match(r"[IWEF]\d{4} ", l)], proc.stderr
    assert lines == ["warning: a warning raised during training (UserWarning)"], proc.stderr
