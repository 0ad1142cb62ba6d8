"""configs/kimi_linear_paper.py follows the Kimi Linear paper's scaling study (arXiv
2510.26692, section 5.3 and Table 2): MoE sizes whose MLA-arm activated non-embedding
counts match Table 2 within 1%, its per-size learning rates and batches, Muon, 4,096
context, its tokens, 6ND budgets on activated parameters; the dry run prints them."""
import pytest

from configs import kimi_linear_paper as kp
from moba_jax import accounting, units
from moba_jax.moe import mlp_kinds
from moba_jax.sweep import plan_sweep
from tests.helpers import run_cli

# Table 2 as printed in the paper: activated non-embedding params, heads = layers, hidden,
# tokens, lr, batch (sequences of 4,096 tokens). Written out again here so that an edit
# of the config's TABLE cannot pass unnoticed.
PAPER = {
    "653m": (653e6, 16, 1216, 38.8e9, 2.006e-3, 336),
    "878m": (878e6, 18, 1376, 59.8e9, 1.790e-3, 432),
    "1100m": (1.1e9, 20, 1536, 85.2e9, 1.617e-3, 512),
    "1400m": (1.4e9, 22, 1632, 102.5e9, 1.486e-3, 576),
    "1700m": (1.7e9, 24, 1776, 128.0e9, 1.371e-3, 640),
}


@pytest.fixture(scope="module")
def plans():
    return {(p.arm, p.size): p for p in plan_sweep(kp.get_config())}


def test_table_is_the_papers():
    assert {name: tuple(rest) for name, *rest in kp.TABLE} == PAPER
    assert kp.SEQ_LEN == 4096 and (kp.N_EXPERTS, kp.TOP_K) == (64, 8)


def test_mla_arm_activated_counts_match_table_2_within_1_percent(plans):
    assert {arm for arm, _ in plans} == {"mla", "kimi_linear"}
    for size, (target, layers, d, *_) in PAPER.items():
        mla, kimi = plans["mla", size], plans["kimi_linear", size]
        assert abs(mla.n_params_activated / target - 1) < 0.01, (size, mla.n_params_activated)
        for p in (mla, kimi):
            m = p.config.model
            assert (m.n_layers, m.n_heads, m.d_model) == (layers, layers, d)
            assert p.n_params_activated == accounting.activated_params(m)
            assert p.n_params_nonembed == accounting.non_embedding_params(m)
            assert p.n_params_nonembed > 4 * p.n_params_activated    # 64 experts, 8 + 1 active
        assert kimi.n_params_activated > mla.n_params_activated      # KDA layers are larger


def test_moe_and_attention_follow_the_paper(plans):
    for (arm, _), p in plans.items():
        m = p.config.model
        assert (m.moe.n_experts, m.moe.top_k) == (64, 8)
        assert (m.moe.n_shared, m.first_k_dense) == (kp.OUR_CHOICES["n_shared"],
                                                     kp.OUR_CHOICES["first_k_dense"])
        assert mlp_kinds(m) == ["dense"] + ["moe"] * (m.n_layers - 1)
        assert m.mlp_dim == (m.moe.top_k + m.moe.n_shared) * m.moe.expert_dim
        assert m.moe.expert_dim % kp.OUR_CHOICES["expert_dim_multiple"] == 0
        assert m.head_dim == 128
        if arm == "mla":
            assert m.attention_pattern == "mla" and m.attention.mla.rope is True
        else:
            assert m.attention_pattern == "kda,kda,kda,mla"
            assert m.attention.mla.rope is False and m.attention.kda.conv_size == 4


def test_per_size_lr_batch_optimizer_and_context_are_the_papers(plans):
    for (arm, size), p in plans.items():
        *_, lr, batch = PAPER[size]
        t = p.config.train
        assert (t.lr, t.global_batch, t.seq_len) == (lr, batch, 4096), (arm, size)
        assert t.optimizer == "muon" and t.schedule == "wsd"


def test_tokens_are_table_2s_and_budgets_are_6nd_of_activated_params(plans):
    for (arm, size), p in plans.items():
        tokens = PAPER[size][3]
        assert tokens * (1 - 1e-4) < p.tokens <= tokens        # whole steps of the batch
        assert p.tokens == plans["mla", size].tokens             # equal data for both arms
        assert p.budget_flops == pytest.approx(6 * p.n_params_activated * p.tokens, rel=1e-12)
    # Figure 5's axis: Table 2's MLA runs at 6 x (published N) x D = 1.76 ... 15.1.
    mla = sorted(units.to_pflops_days(p.budget_flops) for (a, _), p in plans.items() if a == "mla")
    assert mla[0] == pytest.approx(1.76, rel=0.01) and mla[-1] == pytest.approx(15.1, rel=0.01)


def test_dry_run_prints_total_activated_tokens_and_pflops_days(plans):
    out = run_cli("experiments.sweep", "--config=configs/kimi_linear_paper.py", "--dry_run",
                  check=True, timeout=300).stdout
    head = next(line for line in out.splitlines() if line.startswith("run "))
    assert head.split()[:6] == ["run", "N", "non-emb", "N", "activated", "tokens"]
    assert head.rstrip().endswith("PFLOP/s-days") and "budgets in 6nd FLOPs" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.startswith(("mla_", "kimi_linear_"))}
    assert len(rows) == len(plans) == 10
    for p in plans.values():
        total, active, tokens = (int(x.replace(",", "")) for x in rows[p.name][1:4])
        assert (total, active, tokens) == (p.n_params_nonembed, p.n_params_activated, p.tokens)
        assert rows[p.name][-1] == f"{units.to_pflops_days(6 * active * tokens):.3g}"


def test_docstring_table_is_the_configs():
    for line in kp.size_table().splitlines():
        assert "    " + line in kp.__doc__, line
