"""The MoE arms of ``configs/scaling.py`` (``full_moe``, ``kimi_linear_moe``; not in the
default list): planned with activated-parameter 6ND, trained end to end on CPU with
router statistics in ``metrics.jsonl``."""
import os

import pytest

from configs import scaling
from moba_jax import accounting
from moba_jax.moe import mlp_kinds
from moba_jax.sweep.plan import plan_sweep
from tests.helpers import read_jsonl, run_cli

ARMS = ("full_moe", "kimi_linear_moe")
ROUTER_FIELDS = ("moe_aux_loss", "moe_load_max_over_mean", "moe_load", "moe_dropped")


def test_moe_arms_are_defined_but_not_default():
    c = scaling.get_config()
    assert all(a in c.arm_defs for a in ARMS)
    assert not set(ARMS) & set(c.arms.split(","))
    c.arms = ",".join(ARMS)
    for p in plan_sweep(c):
        m = p.config.model
        assert mlp_kinds(m) == ["dense"] + ["moe"] * (m.n_layers - 1)      # first layer dense
        active = accounting.activated_params(m)
        assert active < accounting.non_embedding_params(m) == p.n_params_nonembed
        assert p.flops_per_token["6nd"] == 6 * active


def check_router_metrics(run_dir, n_moe_layers, n_experts):
    rows = read_jsonl(os.path.join(run_dir, "metrics.jsonl"))
    assert rows
    for r in rows:
        assert all(k in r for k in ROUTER_FIELDS), sorted(r)
        assert len(r["moe_load"]) == n_moe_layers and all(len(l) == n_experts for l in r["moe_load"])
        assert all(abs(sum(l) - 1) < 1e-4 for l in r["moe_load"])
        assert r["moe_dropped"] == 0 and r["moe_load_max_over_mean"] >= 1.0
    assert os.path.exists(os.path.join(run_dir, "result.json"))


# slow (~70 s on the busy 2-core CPU: a two-size sweep through the CLI): MoE training through
# the CLI with router statistics in metrics.jsonl is covered in CI by
# tests/test_moe_mesh.py::test_experts_sharded_over_2_of_4_devices_match_1_device, the
# arms' plan by test_moe_arms_are_defined_but_not_default above.
@pytest.mark.slow
def test_full_moe_tiny_sweep_trains_with_router_statistics(tmp_path):
    run_cli("experiments.sweep", "--config=configs/scaling.py:tiny", f"--workdir={tmp_path}",
            "--config.arms=full_moe", check=True)
    for size, layers in (("t1", 1), ("t2", 2)):
        (run,) = [d for d in os.listdir(tmp_path) if d.startswith(f"full_moe_{size}_")]
        check_router_metrics(tmp_path / run, layers, 8)


# slow (~2 min on the 2-core CPU, mostly compiling three KDA layers): the same training
# path (MoE layers, router statistics) is covered in CI by tests/test_moe_mesh.py's
# 4-device vs 1-device training, the sweep by the full_moe tiny sweep above (also slow).
@pytest.mark.slow
def test_kimi_linear_moe_trains_end_to_end(tmp_path):
    run_cli("experiments.sweep", "--config=configs/scaling.py", f"--workdir={tmp_path}",
            "--config.arms=kimi_linear_moe", "--config.sizes=s1", "--config.budgets=4e9",
            "--config.base.train.seq_len=64", "--config.base.train.progress=False",
            "--config.base.data.max_docs=300", "--config.base.eval.points=2",
            "--config.base.eval.batches=2", "--config.base.train.log_every=2", check=True)
    check_router_metrics(tmp_path / "kimi_linear_moe_s1_4e09", 3, 8)
