"""The replication study's plan meets its design (configs/replicate.py, issue #14 point 4),
and the sweep fields it relies on (``tokens``, ``seeds``) behave."""
import collections

import pytest

from configs import replicate, scaling
from moba_jax.attention.moba import moba_keys_per_token
from moba_jax.model import layer_kinds
from moba_jax.sweep.plan import SweepConfigError, plan_sweep
from tests.helpers import run_cli


@pytest.fixture(scope="module")
def plans():
    return plan_sweep(replicate.get_config())


def test_four_arms_two_seeds_three_sizes(plans):
    assert {p.arm for p in plans} == {"full", "moba", "mla", "kimi_linear"}
    cells = collections.Counter((p.arm, p.size) for p in plans)
    assert len({s for _, s in cells}) >= 3
    assert all(n >= 2 for n in cells.values())
    seeds = collections.defaultdict(set)
    for p in plans:
        seeds[(p.arm, p.size)].add(p.config.train.seed)
    assert all(len(s) >= 2 for s in seeds.values())   # distinct init and data order
    kimi = next(p for p in plans if p.arm == "kimi_linear")
    assert layer_kinds(kimi.config.model) == ["kda", "kda", "kda", "mla"]


def test_context_and_moba_sparsity(plans):
    for p in plans:
        assert p.config.train.seq_len >= 1024
    moba = [p for p in plans if p.arm == "moba"]
    for p in moba:
        o, T = p.config.model.attention.moba, p.config.train.seq_len
        assert layer_kinds(p.config.model) == ["moba"] * p.config.model.n_layers
        assert o.block_size * o.top_k <= T / 4        # at most a quarter of the keys at T
        exact, _ = moba_keys_per_token(T, o.block_size, o.top_k)
        assert exact < (T + 1) / 2                    # sparser than causal full attention


def test_equal_tokens_6nd_and_tokens_per_param(plans):
    tokens = collections.defaultdict(set)
    for p in plans:
        assert p.config.train.budget_convention == "6nd"
        assert p.budget_flops == pytest.approx(6 * p.n_params_nonembed * p.tokens)
        assert p.tokens >= 10 * p.n_params_nonembed, p.name
        tokens[p.size].add(p.tokens)
    assert all(len(t) == 1 for t in tokens.values())  # same tokens for every arm of a size


def test_sizes_span_4x_for_every_arm(plans):
    for arm in {p.arm for p in plans}:
        n = [p.n_params_nonembed for p in plans if p.arm == arm]
        assert max(n) >= 4 * min(n), arm


def test_dry_run_cli_prints_every_run(tmp_path):
    out = run_cli("experiments.sweep", "--config=configs/replicate.py", "--dry_run", check=True).stdout
    assert "budgets in 6nd FLOPs" in out and "total: 24 runs" in out
    assert "kimi_linear_r3_" in out and "_seed1" in out


def test_tokens_and_seeds_fields():
    c = scaling.get_config("tiny")
    c.update(budgets="", tokens="2e4,4e4", seeds="0,3")
    plans = plan_sweep(c)
    assert [p.config.train.seed for p in plans[:2]] == [0, 3]
    assert plans[0].name.endswith("tok_seed0") and plans[0].tokens <= 2e4
    c.budgets = "1e9,2e9"
    with pytest.raises(SweepConfigError, match="both set"):
        plan_sweep(c)
    c.update(budgets="", seeds="0,0")
    with pytest.raises(SweepConfigError, match="sweep.seeds"):
        plan_sweep(c)
    c.update(seeds="", tokens="2e4,-1")
    with pytest.raises(SweepConfigError, match="sweep.tokens"):
        plan_sweep(c)
