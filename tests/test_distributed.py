"""Several processes under jax.distributed on localhost: same losses, shared checkpoints, FSDP memory, bad input."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from moba_jax import distributed
from tests.helpers import REPO, read_jsonl, run_cli, tiny_overrides
from tests.test_train import RESTORE_EVAL, assert_same_losses, losses

MESH = ["--config.mesh.data=2", "--config.mesh.fsdp=2"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n: int, devices_each: int, *args: str, module="experiments.train", timeout=240,
           extra_flags=()):
    """Runs ``module`` as ``n`` processes joined by jax.distributed; returns their results."""
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(devices_each)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", module, *args, f"--coordinator_address=127.0.0.1:{port}",
         f"--num_processes={n}", f"--process_id={i}", "--coordinator_timeout_s=60", *extra_flags],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(n)]
    out = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        out.append((p.returncode, so, se))
    return out


def test_two_processes_match_one_process_and_checkpoint_restores_in_one(tmp_path):
    multi, single = tmp_path / "2x2", tmp_path / "1x4"
    res = launch(2, 2, "--config=configs/lm.py:tiny", f"--workdir={multi}", *tiny_overrides(), *MESH)
    for i, (rc, so, se) in enumerate(res):
        assert rc == 0, f"process {i} failed ({rc}):\n{se[-4000:]}"
    assert "done:" in res[0][1] and "done:" not in res[1][1], "only process 0 reports"
    run_cli("experiments.train", "--config=configs/lm.py:tiny", f"--workdir={single}",
            *tiny_overrides(), *MESH, devices=4, check=True)

    cfg = json.load(open(multi / "config.json"))
    assert cfg["processes"] == 2 and cfg["devices"] == 4
    assert cfg["mesh"] == json.load(open(single / "config.json"))["mesh"]
    # gloo's cross-process reductions may sum in another order than the in-process ones.
    assert_same_losses(losses(multi), losses(single), rtol=1e-6)

    # The collectively written checkpoint restores in one process on one device.
    proc = subprocess.run([sys.executable, "-c", RESTORE_EVAL, str(multi), "1", "1"], cwd=REPO,
                          capture_output=True, text=True,
                          env={**os.environ, "JAX_NUM_CPU_DEVICES": "1", "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    final = [r for r in read_jsonl(multi / "metrics.jsonl") if "val_loss" in r][-1]
    assert out["step"] == final["step"] == 30
    np.testing.assert_allclose(out["val"], final["val_loss"], rtol=1e-5)


@pytest.mark.parametrize("mesh,expect", [
    (["--config.mesh.data=1", "--config.mesh.fsdp=2"], "4 devices are available"),
    (["--config.mesh.data=1", "--config.mesh.tensor=4"], "its own 4 of the 8 batch rows"),
])
def test_mesh_that_does_not_fit_the_processes_fails_cleanly(tmp_path, mesh, expect):
    res = launch(2, 2, "--config=configs/lm.py:tiny", f"--workdir={tmp_path / 'run'}",
                 *tiny_overrides(), *mesh, timeout=120)
    for rc, _, se in res:
        assert rc == 2, se[-3000:]
        assert expect in se and "Traceback" not in se
    assert not (tmp_path / "run" / "checkpoints").exists() or not os.listdir(tmp_path / "run" / "checkpoints")


def test_unreachable_coordinator_is_a_one_line_error(tmp_path):
    proc = run_cli("experiments.train", "--config=configs/lm.py:tiny", f"--workdir={tmp_path / 'r'}",
                   f"--coordinator_address=127.0.0.1:{free_port()}", "--num_processes=2",
                   "--process_id=1", "--coordinator_timeout_s=3", timeout=90)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error:")]
    assert len(errors) == 1 and "cannot reach the JAX coordinator at 127.0.0.1" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists(), "nothing may be written before the cluster forms"


CLEAN_ENV = ["JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_NTASKS",
             "SLURM_STEP_NODELIST", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
             "TPU_PROCESS_ADDRESSES", "KUBERNETES_SERVICE_HOST", "JOB_COMPLETION_INDEX"]


def test_when_to_initialise(monkeypatch):
    for k in CLEAN_ENV:
        monkeypatch.delenv(k, raising=False)
    assert distributed.plan() is None, "a plain process must not initialise anything"
    assert distributed.plan(num_processes=1) is None
    assert distributed.plan("h:1", 2, 1) == {"coordinator_address": "h:1", "num_processes": 2,
                                            "process_id": 1}
    assert distributed.plan(mode="on") == {}
    assert distributed.plan("h:1", 2, 1, mode="off") is None
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "node1")
    assert distributed.plan() is None, "a one-task SLURM step is a plain process"
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert distributed.plan() == {}, "srun with several tasks: JAX's SLURM detection"
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "w0,w1,w2,w3")
    assert distributed.plan() == {}, "TPU pod: JAX's TPU detection"
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("JAX_PROCESS_ID", "3")
    assert distributed.plan() == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                  "process_id": 3}
    with pytest.raises(distributed.DistributedError, match="process_id=5"):
        distributed.plan(process_id=5)
    monkeypatch.delenv("JAX_NUM_PROCESSES")
    monkeypatch.delenv("JAX_PROCESS_ID")
    with pytest.raises(distributed.DistributedError, match="--num_processes and --process_id"):
        distributed.plan()
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    with pytest.raises(distributed.DistributedError, match="needs --coordinator_address"):
        distributed.plan(num_processes=2, process_id=0)


FSDP_MEMORY = """
import json
import jax
from jax.sharding import NamedSharding, PartitionSpec as P
from configs.lm import get_config
from moba_jax import sharding as shd
from moba_jax.budget import run_length
from moba_jax.train import optim, state as st, step as stp

out = {}
for fsdp in (1, 4):
    c = get_config("tiny")   # widened so that replicated norms and scalars are negligible
    c.model.update(d_model=256, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=64, mlp_dim=1024)
    t = c.train
    mesh = shd.make_mesh(data=4 // fsdp, fsdp=fsdp)
    spec = st.model_spec(c.model, t.seed)
    tx, schedule = optim.make_optimizer(t, run_length(c.model, t).steps, spec.param_shapes,
                                        spec.metadata)
    state_sh = st.state_shardings(spec, tx, mesh)
    batch_sh = NamedSharding(mesh, P(("data", "fsdp"), None))
    state = st.abstract_state(spec, tx, state_sh)
    batch = {k: jax.ShapeDtypeStruct((t.global_batch, t.seq_len), jax.numpy.int32, sharding=batch_sh)
             for k in stp.BATCH_KEYS}
    with shd.activation_sharding(mesh):
        compiled = stp.jit_train_step(spec, tx, schedule, 1, state_sh, batch_sh).lower(state, batch).compile()
    m = compiled.memory_analysis()
    out[fsdp] = {"argument": m.argument_size_in_bytes, "alias": m.alias_size_in_bytes,
                 "batch": sum(4 * t.global_batch * t.seq_len // 4 for _ in stp.BATCH_KEYS),
                 "state_global": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))}
print(json.dumps(out))
"""


def test_fsdp_divides_parameter_and_optimizer_memory_per_device():
    proc = subprocess.run([sys.executable, "-c", FSDP_MEMORY], cwd=REPO, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "JAX_NUM_CPU_DEVICES": "4", "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = {int(k): v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}
    # Per-device state = the compiled step's arguments minus this device's quarter of the batch
    # (the batch is split 4 ways in both meshes); it is also exactly what the step donates.
    state = {f: v["argument"] - v["batch"] for f, v in m.items()}
    for f, v in m.items():
        assert state[f] == v["alias"], "the donated state should be all non-batch arguments"
    assert state[1] == pytest.approx(m[1]["state_global"], rel=1e-6), "fsdp=1 replicates"
    ratio = state[4] / state[1]
    assert 0.25 <= ratio < 0.26, f"fsdp=4 keeps {ratio:.4f} of the fsdp=1 per-device state"
