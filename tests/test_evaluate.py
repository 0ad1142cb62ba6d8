"""Checkpoint evaluation: buckets, cross-mesh restore, decoding parity, probes, errors."""
import json
import os

import jax
import numpy as np
import pytest

from analysis.results import AnalysisWarning

from moba_jax import probes
from moba_jax.data import build_datasets, default_data_config
from moba_jax.decoding import incremental_logits
from moba_jax.model import default_model_config
from moba_jax.train.state import init_params, model_spec
from tests.helpers import run_cli, tiny_overrides

EVAL_ARGS = ["--config.seq_len=96", "--config.bucket_size=32", "--config.trailing=16",
             "--config.max_docs=24", "--config.batch_size=4"]


@pytest.fixture(scope="module")
def run_4dev(tmp_path_factory):
    d = tmp_path_factory.mktemp("eval_run")
    run_cli("experiments.train", "--config=configs/lm.py:tiny", f"--workdir={d}",
            *tiny_overrides(), "--config.mesh.data=2", "--config.mesh.fsdp=2",
            devices=4, check=True)
    return d


def evaluate(workdir, *extra, devices=1, check=True):
    return run_cli("experiments.evaluate", f"--workdir={workdir}", *EVAL_ARGS, *extra,
                   devices=devices, check=check)


def latest_file(workdir):
    """The evaluation JSON written last (files of several settings coexist)."""
    d = os.path.join(workdir, "eval")
    return max((os.path.join(d, f) for f in os.listdir(d) if f.endswith(".json")), key=os.path.getmtime)


def result(workdir):
    return json.load(open(latest_file(workdir)))


def test_buckets_average_back_to_overall_and_restore_on_other_meshes(run_4dev, tmp_path):
    evaluate(run_4dev, "--overwrite", devices=1)
    r1 = result(run_4dev)
    assert os.path.exists(os.path.join(run_4dev, "eval", f"{r1['key']}.png"))
    buckets = [b for b in r1["buckets"] if b["tokens"]]
    weighted = sum(b["loss"] * b["tokens"] for b in buckets) / sum(b["tokens"] for b in buckets)
    assert weighted == pytest.approx(r1["overall"]["loss"], rel=1e-9)
    assert sum(b["tokens"] for b in buckets) == r1["overall"]["tokens"]
    assert [b["label"] for b in r1["buckets"]] == ["0-32", "32-64", "64-96"]
    assert r1["seq_len"] == 96 > r1["train_seq_len"]          # extrapolation beyond training
    assert r1["trailing"]["sequences"] > 0 and r1["trailing"]["loss"] is not None
    # Same checkpoint (trained on a 2x2 mesh) evaluated on 2 devices with another mesh.
    evaluate(run_4dev, "--overwrite", devices=2)
    r2 = result(run_4dev)
    for key in ("overall", "trailing"):
        assert r2[key]["loss"] == pytest.approx(r1[key]["loss"], rel=1e-6)
    for b1, b2 in zip(r1["buckets"], r2["buckets"]):
        assert b2["loss"] == pytest.approx(b1["loss"], rel=1e-6)


def test_evaluation_is_skipped_when_done(run_4dev):
    evaluate(run_4dev)
    before = os.path.getmtime(os.path.join(run_4dev, "eval", f"{result(run_4dev)['key']}.json"))
    proc = evaluate(run_4dev)
    after = os.path.getmtime(os.path.join(run_4dev, "eval", f"{result(run_4dev)['key']}.json"))
    assert before == after and "overall" in proc.stdout


DECODE_CASES = [
    ("full", {}, 2e-5),
    ("moba", dict(moba=dict(block_size=4, top_k=2)), 2e-5),
    ("moba", dict(moba=dict(block_size=8, top_k=1)), 2e-5),
    ("mla", dict(mla=dict(rope=True)), 2e-5),
    ("mla", dict(mla=dict(rope=False)), 2e-5),
    # KDA: chunked prefill vs token recurrence differ by float32 summation order. The
    # hybrid decodes KDA layers in both prefill modes; KDA alone (~15 s each) is slow.
    pytest.param("kda", {}, 5e-5, marks=pytest.mark.slow),
    ("kda,kda,kda,mla", dict(mla=dict(rope=False)), 5e-5),
]


@pytest.mark.parametrize("pattern,opts,atol", DECODE_CASES)
@pytest.mark.parametrize("prefill", [1, 11])
def test_decoding_parity(pattern, opts, atol, prefill):
    """Logits of cached incremental decoding equal those of a full forward pass (float32)."""
    cfg = default_model_config()
    cfg.update(d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=64,
               attention_pattern=pattern)
    cfg.attention.mla.update(kv_latent_dim=16, rope_dim=8)
    for kind, o in opts.items():
        cfg.attention[kind].update(o)
    spec = model_spec(cfg)
    params = init_params(cfg, 0)
    tokens = jax.random.randint(jax.random.key(0), (2, 29), 0, 259)
    full = jax.jit(spec.apply)(params, tokens)
    inc = incremental_logits(spec, params, tokens, prefill=prefill)
    np.testing.assert_allclose(inc, full, rtol=1e-5, atol=atol)


def test_probes_separate_a_copying_model_from_a_random_one():
    c = default_data_config()
    c.max_docs = 200
    ds = build_datasets(c, seq_len=128, global_batch=4, seed=0)
    filler = ds.val_rows.reshape(-1)
    filler = filler[filler < 256].astype(np.int32)
    oracle = probes.induction_oracle(259)
    n = probes.needle_probe(oracle, filler, [96, 192], [0.0, 0.5, 1.0], trials=4)
    m = probes.mqar_probe(oracle, filler, [96, 192], [2, 8], trials=4)
    assert np.all(np.array(n["accuracy"]) == 1.0) and np.all(np.array(m["accuracy"]) == 1.0)

    cfg = default_model_config()
    spec, params = model_spec(cfg), init_params(cfg, 0)
    fn = jax.jit(lambda t: spec.apply(params, t))
    n = probes.needle_probe(fn, filler, [96, 192], [0.0, 0.5, 1.0], trials=16)
    m = probes.mqar_probe(fn, filler, [96, 192], [2, 8], trials=16)
    assert np.mean(n["accuracy"]) < 0.05                        # all 5 digits: chance 1e-5
    assert abs(np.mean(n["digit_accuracy"]) - 0.1) < 0.06        # per digit: chance 0.1
    assert abs(np.mean(m["accuracy"]) - 0.1) < 0.06


def test_probes_in_evaluation_results(run_4dev):
    proc = evaluate(run_4dev, "--overwrite", "--config.needle_lengths=96", "--config.mqar_lengths=96",
                    "--config.mqar_pairs=4", "--config.probe_trials=2")
    r = result(run_4dev)
    # Probe scores: one line per probe per run on stdout.
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 3 and "needle (5 depths, 2 trials" in lines[1] and "len 96:" in lines[1]
    assert "mqar (2 trials" in lines[2] and "len 96 x4:" in lines[2]
    assert len(r["retrieval"]["needle"]["accuracy"]) == 1
    assert len(r["retrieval"]["mqar"]["accuracy"][0]) == 1
    # The probes are part of the settings: their file sits beside the plain evaluation's.
    assert r["settings"]["probes"]["needle"] == {"lengths": [96], "depths": [0, 0.25, 0.5, 0.75, 1],
                                                 "trials": 2}
    assert os.path.basename(latest_file(run_4dev)) == f"{r['key']}.json"
    assert r["key"].startswith(f"step_{r['step']:08d}_len96_b32_t16_")


def test_settings_coexist_and_probe_scores_are_printed(run_4dev):
    plain = evaluate(run_4dev)
    r_plain = result(run_4dev)
    coarse = evaluate(run_4dev, "--config.bucket_size=48")
    r_coarse = result(run_4dev)
    assert r_coarse["key"] != r_plain["key"] and "_len96_b48_t16_" in r_coarse["key"]
    assert [b["label"] for b in r_coarse["buckets"]] == ["0-48", "48-96"]
    files = os.listdir(os.path.join(run_4dev, "eval"))
    assert {f"{r_plain['key']}.json", f"{r_coarse['key']}.json"} <= set(files)
    # The plain setting is still there and still skipped: the same numbers come back.
    again = evaluate(run_4dev)
    assert again.stdout == plain.stdout and "overall" in coarse.stdout


def _assert_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    for n in needles:
        assert n in last, last


def test_evaluate_bad_inputs(run_4dev, tmp_path):
    _assert_error(evaluate(tmp_path, check=False), "neither a run directory")
    _assert_error(evaluate(run_4dev, "--step=12345", check=False), "step 12345 does not exist",
                  "available steps")
    _assert_error(evaluate(run_4dev, "--config.seq_len=-5", check=False),
                  "config.seq_len: -5 is negative")
    _assert_error(evaluate(run_4dev, "--overwrite", "--config.needle_lengths=20", check=False),
                  "too short for the needle")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(
        json.dumps(json.load(open(run_4dev / "config.json"))))
    _assert_error(evaluate(tmp_path / "run", check=False), "has no checkpoints")


def test_malformed_config_json_is_one_complete_line(tmp_path):
    """A raw tab inside a string of config.json: the message names the file, line, column
    and what to do (json's own text stops at "Invalid control character at")."""
    text = '{\n  "config": {"name": "a\tb"}\n}\n'
    (tmp_path / "config.json").write_text(text)
    col = text.splitlines()[1].index("\t") + 1
    proc = evaluate(tmp_path, check=False)
    _assert_error(proc, f"error: {tmp_path / 'config.json'} is not valid JSON at line 2 column "
                        f"{col} (Invalid control character); fix it (experiments.train writes "
                        "it when a run starts), or train the run again in a fresh --workdir")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_sweep_mode_evaluates_every_run_and_feeds_position_wise_figure(tiny_sweep_dir, tmp_path):
    import shutil

    from analysis import plots, position, results
    wd = tmp_path / "sweep"
    shutil.copytree(tiny_sweep_dir, wd)
    proc = run_cli("experiments.evaluate", f"--workdir={wd}", "--config.seq_len=128",
                   "--config.bucket_size=32", "--config.max_docs=16", "--config.batch_size=4",
                   check=True)
    sweep = results.load_sweep(wd)
    for run in sweep.runs:
        files = [f for f in os.listdir(wd / run.run / "eval") if f.endswith(".json")]
        assert len(files) == 1, run.run
    assert proc.stdout.count("overall") == len(sweep.runs)
    evals = position.load_position_evals(sweep, "exact")
    assert set(evals.steps) == {r.run for r in sweep.runs} and not evals.skipped
    data = evals.bucket_data
    assert [k for k in data] == ["0-32", "32-64", "64-96", "96-128", "trailing"]
    assert set(next(iter(data.values()))) == set(sweep.arms)
    plots.plot_position_wise(data, tmp_path / "position_wise.png")
    png = tmp_path / "position_wise.png"
    assert png.exists() and png.stat().st_size > 10_000
    # A second pass finds every run evaluated and skips the work.
    again = run_cli("experiments.evaluate", f"--workdir={wd}", "--config.seq_len=128",
                    "--config.bucket_size=32", "--config.max_docs=16", "--config.batch_size=4",
                    check=True)
    assert again.stdout.count("overall") == len(sweep.runs)


def test_figure_uses_one_setting_and_report_tables_probe_scores(tmp_path):
    """Old-style files (every run) and a second, keyed setting (5 of 6 runs, with probes)."""
    from analysis import position, results
    from analysis.report.position_wise import add_position_wise
    from analysis.report.probes import add_probes
    from analysis.report.blocks import Image, Para, Table
    from tests.test_report import write_sweep
    root = write_sweep(tmp_path / "sweep", {"full": 3, "moba": 3}, evals=True)
    sweep = results.load_sweep(root)
    for run in sweep.runs[:5]:
        old = json.loads((root / run.run / "eval" / "step_00000050.json").read_text())
        new = {**old, "seq_len": 4096, "bucket_size": 1024, "trailing_size": 1024, "max_docs": 0,
               "buckets": old["buckets"][:2],
               "retrieval": {"needle": {"lengths": [512], "depths": [0.0, 1.0], "accuracy": [[0.5, 1.0]],
                                        "trials": 4},
                             "mqar": {"lengths": [512], "pairs": [4, 16], "accuracy": [[0.25, 0.125]],
                                      "trials": 4}}}
        (root / run.run / "eval" / "step_00000050_len4096_b1024_t1024_0123abcd.json").write_text(json.dumps(new))
    # Default: the setting of the most runs (the old files: all 6), at each run's latest step.
    pos = position.load_position_evals(sweep, "exact")
    assert pos.setting == position.EvalSetting(8192, 2048, 2048, None)
    assert set(pos.steps.values()) == {100} and not pos.skipped
    # Forced to the keyed setting: one point per run at step 50; the sixth run is skipped.
    s1 = position.EvalSetting(4096, 1024, 1024, 0)
    with pytest.warns(AnalysisWarning, match="not evaluated at len4096/b1024/t1024/docs=all"):
        pos1 = position.load_position_evals(sweep, "exact", setting=s1)
    assert set(pos1.steps.values()) == {50} and list(pos1.skipped) == [sweep.runs[5].run]
    assert list(pos1.bucket_data) == ["0k-2k", "2k-4k", "trailing"]
    # Most runs wins; a tie goes to the longer evaluation length.
    assert position.choose_setting({"a": {s1}, "b": {s1, pos.setting}}) == s1
    assert position.choose_setting({"a": {s1}, "b": {pos.setting}}) == pos.setting
    blocks = []
    add_position_wise(blocks, [], sweep, tmp_path, "exact", 0, lambda s: None)
    text = " ".join(b.text for b in blocks if isinstance(b, Para))
    assert "evaluation length 8192, 2048-token buckets, trailing 2048, documents not recorded" in text
    assert any("evaluation length 8192" in b.caption for b in blocks if isinstance(b, Image))
    blocks = []
    add_probes(blocks, sweep)
    tables = [b for b in blocks if isinstance(b, Table)]
    assert len(tables) == 2 and tables[0].headers == ("run", "step", "trials", "mqar L=512 x4",
                                                      "mqar L=512 x16", "needle L=512")
    assert tables[0].rows[0][1:] == ("50", "4", "0.25", "0.125", "0.75")
    assert len(tables[1].rows) == 2          # the sixth run (moba) has no probe scores
