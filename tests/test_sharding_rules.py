"""Sharding rules live in the config (``mesh.rules``) and each run can override them."""
import pytest

from configs import lm
from moba_jax import sharding as shd
from moba_jax.train import optim, state as st
from tests.helpers import run_cli, tiny_overrides


def test_default_config_rules_are_the_default_table():
    c = lm.get_config("tiny")
    assert dict(shd.rules_from_config(c.mesh.rules)) == dict(shd.DEFAULT_RULES)


def test_overridden_rules_change_the_parameter_shardings():
    c = lm.get_config("tiny")
    mesh = shd.make_mesh(1, 1, 1)
    spec = st.model_spec(c.model, 0)
    tx, _ = optim.make_optimizer(c.train, 10, spec.param_shapes, spec.metadata)

    def mlp_up_spec(rules):
        sh = st.state_shardings(spec, tx, mesh, shd.rules_from_config(rules))
        return tuple(sh["params"]["blocks"][0]["mlp"]["up"]["kernel"].spec)

    assert mlp_up_spec(c.mesh.rules) == ("fsdp", "tensor")         # (embed, mlp)
    c.mesh.rules.mlp = "fsdp"
    c.mesh.rules.embed = ""
    assert mlp_up_spec(c.mesh.rules) == (None, "fsdp")


def test_bad_rule_is_one_line_naming_the_field(tmp_path):
    proc = run_cli("experiments.train", "--config=configs/lm.py:tiny", f"--workdir={tmp_path}",
                   *tiny_overrides(), "--config.mesh.rules.mlp=model")
    assert proc.returncode == 2
    err = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(err) == 1 and "mesh.rules.mlp='model'" in err[0] and "unknown mesh axis" in err[0]
    assert not (tmp_path / "config.json").exists()
