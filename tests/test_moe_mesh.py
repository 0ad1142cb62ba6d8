"""Expert parallelism on simulated CPU devices: a tiny MoE model trains to the same
losses on 4 devices (experts sharded over 2 of them) as on 1, and each device holds
only its slice of the experts (``compiled.memory_analysis()``)."""
import json
import os
import subprocess
import sys

import numpy as np

from tests.helpers import REPO, read_jsonl, run_cli, tiny_overrides
from tests.test_train import assert_same_losses, losses

MOE = ["--config.model.mlp_pattern=moe", "--config.model.moe.n_experts=4",
       "--config.model.moe.aux_loss_coef=1e-4", "--config.train.steps=20"]


def train_moe(workdir, *extra, devices=1):
    return run_cli("experiments.train", "--config=configs/lm.py:tiny", f"--workdir={workdir}",
                   *tiny_overrides(), *MOE, *extra, devices=devices, check=True)


def test_experts_sharded_over_2_of_4_devices_match_1_device(tmp_path):
    four, one = tmp_path / "mesh4", tmp_path / "mesh1"
    train_moe(four, "--config.mesh.data=2", "--config.mesh.fsdp=2", devices=4)
    train_moe(one, devices=1)
    cfg = json.load(open(four / "config.json"))
    assert cfg["mesh"] == {"data": 2, "fsdp": 2, "tensor": 1}
    assert cfg["config"]["mesh"]["rules"]["expert"] == "fsdp"      # 2 experts per device
    assert_same_losses(losses(four), losses(one), rtol=2e-5)
    a, b = read_jsonl(four / "metrics.jsonl"), read_jsonl(one / "metrics.jsonl")
    for ra, rb in zip(a, b):   # the same routing: the same loads, step by step
        np.testing.assert_allclose(ra["moe_load"], rb["moe_load"], atol=1e-6)
        assert ra["moe_dropped"] == rb["moe_dropped"] == 0
        np.testing.assert_allclose(ra["moe_aux_loss"], rb["moe_aux_loss"], rtol=2e-5)
    assert cfg["params"]["non_embedding_activated"] < cfg["params"]["non_embedding"]


MEMORY = """
import json
import jax, jax.numpy as jnp
from configs import lm
from moba_jax import sharding as shd
from moba_jax.train import optim, state as st, step as stp
from jax.sharding import NamedSharding, PartitionSpec as P

c = lm.get_config("tiny")
c.model.update(mlp_pattern="moe", d_model=64, mlp_dim=192)
c.model.moe.update(n_experts=8)
c.mesh.rules.embed = ""          # only the experts are sharded over fsdp
spec = st.model_spec(c.model, 0)
tx, schedule = optim.make_optimizer(c.train, 10, spec.param_shapes, spec.metadata)
out = {}
for data, fsdp in ((4, 1), (2, 2), (1, 4)):
    mesh = shd.make_mesh(data, fsdp, 1)
    rules = shd.rules_from_config(c.mesh.rules)
    sh = st.state_shardings(spec, tx, mesh, rules)
    bs = NamedSharding(mesh, P(("data", "fsdp"), None))
    b, t = c.train.global_batch, c.train.seq_len
    batch = {k: jax.ShapeDtypeStruct((b, t), jnp.float32 if k == "loss_mask" else jnp.int32,
                                     sharding=bs) for k in stp.BATCH_KEYS}
    with shd.activation_sharding(mesh, rules):
        fn = stp.jit_train_step(spec, tx, schedule, 1, sh, bs)
        mem = fn.lower(st.abstract_state(spec, tx, sh), batch).compile().memory_analysis()
    gate = sh["params"]["blocks"][0]["mlp"]["gate"]
    out[fsdp] = {"arguments": mem.argument_size_in_bytes,
                 "gate_shard": list(gate.shard_shape(spec.param_shapes["blocks"][0]["mlp"]["gate"].shape))}
shapes = jax.tree.leaves(spec.param_shapes)
axes = jax.tree.leaves(spec.logical_axes, is_leaf=lambda x: isinstance(x, tuple))
out["expert_bytes"] = sum(s.size * 4 for s, a in zip(shapes, axes) if "expert" in a)
print(json.dumps(out))
"""


def test_expert_weights_per_device_shrink_with_the_expert_axis():
    proc = subprocess.run([sys.executable, "-c", MEMORY], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "JAX_NUM_CPU_DEVICES": "4", "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["1"]["gate_shard"][0] == 8 and out["2"]["gate_shard"][0] == 4 \
        and out["4"]["gate_shard"][0] == 2
    # Parameters plus AdamW's two moments: 3 copies of every array with an expert axis
    # (the experts' weights, the routers and their biases; with mesh.rules.embed="" the
    # router's expert axis takes fsdp too).
    state_bytes = 3 * out["expert_bytes"]
    for size in (2, 4):
        saved = out["1"]["arguments"] - out[str(size)]["arguments"]
        np.testing.assert_allclose(saved, state_bytes * (1 - 1 / size), rtol=0.01,
                                   err_msg=f"expert axis of size {size}")
