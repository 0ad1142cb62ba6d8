"""A kind defined outside the package works everywhere, with no package file edited.

``tests/custom_kinds/sliding_window.py`` defines sliding-window attention (``"swa"``);
``tests/custom_kinds/swa_sweep.py`` is a sweep config that imports it. From there the
kind goes through the dry run, training, the sweep's figure and results, the report,
FLOP and parameter accounting, a hybrid schedule, evaluation and decoding in a fresh
process, and incremental decoding.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from configs import lm
from moba_jax import accounting
from moba_jax.attention import AttentionContractError, get_attention, register_attention
from moba_jax.budget import run_length, switched_model_config
from moba_jax.decoding import incremental_logits
from moba_jax.model import default_model_config, layer_kinds, param_counts
from moba_jax.train.state import init_params, model_spec
from tests.custom_kinds import sliding_window  # noqa: F401  (registers "swa")
from tests.helpers import read_jsonl, run_cli

CONFIG = "--config=tests/custom_kinds/swa_sweep.py"


def swa_cfg(pattern="swa", window=5):
    cfg = default_model_config()
    cfg.update(d_model=32, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=64,
               attention_pattern=pattern)
    cfg.attention.swa.window = window
    return cfg


@pytest.fixture(scope="module")
def swa_sweep(tmp_path_factory):
    wd = tmp_path_factory.mktemp("swa_sweep")
    # Only the user's arm: the built-in arms are covered by the tiny sweep of conftest.py.
    proc = run_cli("experiments.sweep", CONFIG, "--config.arms=swa", f"--workdir={wd}", check=True)
    return wd, proc


def test_dry_run_plans_the_user_kind():
    proc = run_cli("experiments.sweep", CONFIG, "--dry_run", check=True)
    rows = [l.split() for l in proc.stdout.splitlines() if l.startswith("swa_")]
    assert [r[0] for r in rows] == ["swa_t1_6e08", "swa_t2_2e09"]
    # Same parameters as full attention, fewer exact FLOPs, so more tokens per budget.
    full = {l.split()[0].replace("full", "swa"): l.split() for l in proc.stdout.splitlines()
            if l.startswith("full_")}
    for r in rows:       # columns: run, N non-emb, N activated, tokens, ...
        assert r[1:3] == full[r[0]][1:3]
        assert int(r[3].replace(",", "")) > int(full[r[0]][3].replace(",", ""))


def test_sweep_trains_and_draws_the_user_kind(swa_sweep):
    wd, proc = swa_sweep
    rows = read_jsonl(os.path.join(wd, "results.jsonl"))
    assert sorted(r["arm"] for r in rows) == ["swa", "swa"]
    swa = [r for r in rows if r["arm"] == "swa"]
    assert all(r["arm_display"] == "Sliding Window" and r["arm_colour"] == "Greens" for r in swa)
    assert all(np.isfinite(r["final_val_loss"]) and r["final_val_loss"] < 5.0 for r in swa)
    png = os.path.join(wd, "loss_vs_compute.png")
    assert os.path.getsize(png) > 10_000
    assert "Sliding Window: L = " in proc.stdout  # the fitted-law summary names the arm
    run_dir = os.path.join(wd, swa[0]["run"])
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    assert cfg["attention_kinds"]["swa"]["module"].endswith("sliding_window")


def test_report_covers_the_user_kind(swa_sweep, tmp_path):
    wd, _ = swa_sweep
    run_cli("experiments.report", f"--workdir={wd}", f"--out={tmp_path}", "--bootstrap=20",
            check=True)
    md = (tmp_path / "report.md").read_text()
    assert "| swa_t2_2e09 | swa |" in md and (tmp_path / "figures" / "loss_vs_compute.png").exists()
    # The report's figures label arms through the sweep's results rows.
    from analysis import results
    sweep = results.load_sweep(wd)
    assert sweep.display_name("swa") == "Sliding Window" and sweep.colour_family("swa") == "Greens"


def test_evaluate_and_generate_a_user_kind_run_in_a_fresh_process(swa_sweep, tmp_path):
    """The run's config.json records where "swa" lives; a process that never imported it
    (experiments.evaluate / generate) registers it from there."""
    wd, _ = swa_sweep
    run = sorted(d for d in os.listdir(wd) if d.startswith("swa_"))[0]
    proc = run_cli("experiments.evaluate", f"--workdir={os.path.join(wd, run)}",
                   "--config.seq_len=64", "--config.bucket_size=32", "--config.max_docs=8",
                   "--config.batch_size=4", check=True)
    assert "overall" in proc.stdout
    gen = run_cli("experiments.generate", f"--workdir={os.path.join(wd, run)}",
                  "--prompt=def ", "--max_new_tokens=8", check=True)
    assert gen.stdout.strip()


def test_accounting_asks_the_kind():
    cfg = swa_cfg(window=8)
    counts = param_counts(model_spec(cfg).param_shapes)
    assert counts["non_embedding"] == accounting.non_embedding_params(cfg)
    T = 64
    attn = accounting.forward_flops_per_token(cfg, T, "exact")["attention"]
    proj = cfg.n_layers * 2.0 * cfg.d_model * cfg.head_dim * (2 * cfg.n_heads + 2 * cfg.n_kv_heads)
    keys = np.minimum(np.arange(T) + 1, 8).mean()
    assert attn == pytest.approx(proj + cfg.n_layers * 4.0 * cfg.head_dim * cfg.n_heads * keys)


def test_hybrid_schedule_switches_the_user_kind():
    cfg = swa_cfg("swa,full")
    assert layer_kinds(switched_model_config(cfg)) == ["full"] * 4
    train = lm.train_config()
    train.update(seq_len=64, global_batch=2, steps=10, switch_to_full_at=0.5)
    length = run_length(cfg, train)
    assert length.switch_step == 5
    after = accounting.train_flops_per_token(switched_model_config(cfg), 64, "exact")
    assert length.flops_per_token_after["exact"] == pytest.approx(after)
    assert length.flops_per_token["exact"] < after


@pytest.mark.parametrize("pattern", ["swa", "swa,full"])
@pytest.mark.parametrize("prefill", [1, 11])
def test_decoding_parity(pattern, prefill):
    """Cached incremental decoding equals the full forward pass (float32)."""
    cfg = swa_cfg(pattern)
    spec = model_spec(cfg)
    params = init_params(cfg, 0)
    tokens = jax.random.randint(jax.random.key(0), (2, 23), 0, 259)
    full = jax.jit(spec.apply)(params, tokens)
    inc = incremental_logits(spec, params, tokens, prefill=prefill)
    np.testing.assert_allclose(inc, full, rtol=1e-5, atol=2e-5)
    # The window matters: a full-attention model with the same parameters differs.
    cfg_full = swa_cfg(pattern.replace("swa", "full"))
    other = model_spec(cfg_full).apply(params, tokens)
    assert np.abs(np.asarray(other) - np.asarray(full)).max() > 1e-3


def test_a_kind_missing_part_of_the_contract_is_refused():
    class Half:
        display_name = "Half"

        @staticmethod
        def default_options():
            return {}

        def __call__(self, x, positions):
            return x

    with pytest.raises(AttentionContractError) as e:
        register_attention("half")(Half)
    msg = str(e.value)
    for part in ("param_count", "flops_per_token", "init_cache", "step", "colour_family"):
        assert part in msg
    with pytest.raises(ValueError, match="unknown attention kind 'half'"):
        get_attention("half")
