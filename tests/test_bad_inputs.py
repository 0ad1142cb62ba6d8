"""Every class of bad input gets a one-line error naming the field, a non-zero
exit and no result that looks complete."""
import os

import pytest

from tests.helpers import run_cli, tiny_overrides


def assert_clean_failure(proc, *needles, workdir=None):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), last
    for n in needles:
        assert n in last, f"{n!r} not in {last!r}"
    if workdir is not None:
        assert not os.path.exists(os.path.join(workdir, "result.json"))


def train(workdir, *extra):
    return run_cli("experiments.train", "--config=configs/lm.py:tiny", f"--workdir={workdir}",
                   *tiny_overrides(), *extra)


@pytest.mark.parametrize("extra,needles", [
    (["--config.model.attention_pattern=flash_magic"],
     ["model.attention_pattern", "unknown attention kind 'flash_magic'", "known kinds"]),
    (["--config.model.n_heads=3", "--config.model.n_kv_heads=2"],
     ["model.n_kv_heads: 2 does not divide model.n_heads=3"]),
    (["--config.model.head_dim=7"], ["model.head_dim: 7 is odd", "even"]),
    (["--config.train.seq_len=0"], ["train.seq_len: 0 is not positive"]),
    (["--config.train.steps=0", "--config.train.budget_flops=1000"],
     ["train.budget_flops", "smaller than one step"]),
    (["--config.mesh.data=3"], ["mesh:", "JAX_NUM_CPU_DEVICES"]),
    (["--config.data.source=text_dir", "--config.data.path=/nonexistent/corpus"],
     ["data.path", "/nonexistent/corpus"]),
])
def test_bad_train_config(tmp_path, extra, needles):
    wd = tmp_path / "run"
    assert_clean_failure(train(wd, *extra), *needles, workdir=wd)


def test_empty_data_folder(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    wd = tmp_path / "run"
    proc = train(wd, "--config.data.source=text_dir", f"--config.data.path={empty}")
    assert_clean_failure(proc, "data.", workdir=wd)


def test_unknown_arm_in_sweep(tmp_path):
    proc = run_cli("experiments.sweep", "--config=configs/scaling.py:tiny",
                   f"--workdir={tmp_path}", "--config.arms=full,not_an_arm")
    assert_clean_failure(proc, "sweep.arms", "not_an_arm", "defined arms")
    assert not os.path.exists(tmp_path / "results.jsonl")


def test_sweep_budget_below_one_step(tmp_path):
    proc = run_cli("experiments.sweep", "--config=configs/scaling.py:tiny", "--dry_run",
                   "--config.budgets=10,20")
    assert_clean_failure(proc, "train.budget_flops", "smaller than one step")


def test_unreadable_checkpoint(tmp_path):
    wd = tmp_path / "run"
    ok = train(wd, "--config.train.steps=10", "--config.train.checkpoint_every=5")
    assert ok.returncode == 0, ok.stderr[-2000:]
    os.remove(wd / "result.json")
    # Damage every array file of the latest checkpoint.
    state_dir = wd / "checkpoints" / "10" / "state"
    for root, _, files in os.walk(state_dir):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    proc = train(wd, "--config.train.steps=10", "--config.train.checkpoint_every=5")
    assert_clean_failure(proc, "cannot read the checkpoint", "checkpoints/10", workdir=wd)


@pytest.mark.parametrize("field,value,needle", [
    ("train.steps", -5, "train.steps: -5 is negative"),
    ("train.tokens", -1, "train.tokens: -1 is negative"),
    ("train.lr", 0.0, "train.lr: 0.0 is not positive"),
    ("train.warmup_frac", 1.0, "train.warmup_frac: 1.0 is outside [0, 1)"),
    ("train.b2", 1.0, "train.b2: 1.0 is outside [0, 1)"),
    ("train.grad_accum", 3, "train.grad_accum: 3 does not divide train.global_batch=8"),
    ("train.budget_convention", "6ND", "train.budget_convention: '6ND' is not one of"),
    ("model.attention.moba.block_size", 0, "model.attention.moba.block_size: 0 is not positive"),
    ("model.attention.moba.top_k", -1, "model.attention.moba.top_k: -1 is not positive"),
    ("model.attention.kda.chunk_size", 24, "model.attention.kda.chunk_size: 24 is not a power of two"),
    ("model.attention.mla.rope_dim", 7, "model.attention.mla.rope_dim: 7 is odd"),
    ("model.attention.mla.implementation", "flash", "model.attention.mla.implementation: 'flash'"),
    ("model.n_layers", 0, "model.n_layers: 0 is not positive"),
    ("mesh.fsdp", 0, "mesh.fsdp: 0 is not positive"),
    ("eval.batches", 0, "eval.batches: 0 is not positive"),
])
def test_validation_pass_names_field_problem_and_fix(field, value, needle):
    """Each range the validation pass checks, in-process (the CLI's one line is in
    tests/test_faults.py): the message is ``<field>: <problem>; <what to do>``."""
    from configs.lm import get_config
    from moba_jax.validation import ConfigError, check_run_config
    cfg = get_config("tiny")
    cfg.model.attention_pattern = "full,moba,kda,mla"
    cfg.model.n_layers = 4
    check_run_config(cfg)      # the unchanged config passes
    node = cfg
    *path, last = field.split(".")
    for p in path:
        node = node[p]
    node[last] = value
    with pytest.raises(ConfigError) as err:
        check_run_config(cfg)
    msg = str(err.value)
    assert msg.startswith(needle) and "; " in msg and "\n" not in msg, msg


def test_evaluate_and_generate_validate_their_settings(tmp_path):
    proc = run_cli("experiments.evaluate", f"--workdir={tmp_path}", "--config.needle_depths=0,2")
    assert_clean_failure(proc, "config.needle_depths: '0,2' holds a depth outside [0, 1]")
    proc = run_cli("experiments.generate", f"--workdir={tmp_path}", "--temperature=-1")
    assert_clean_failure(proc, "--temperature: -1.0 is negative")
