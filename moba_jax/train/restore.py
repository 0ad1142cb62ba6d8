"""Load a trained run back: its config and parameters on *any* mesh.

    from moba_jax.train.restore import load_run
    run = load_run("runs/scaling/full_s4_2.5e12")            # latest checkpoint
    logits = run.spec.apply(run.params, tokens)

The checkpoint's arrays are restored straight into the shardings of the
current mesh (default: all local devices on the ``data`` axis), whatever mesh
the run was trained on.
"""
from __future__ import annotations

import dataclasses
import os

import ml_collections
from jax.sharding import Mesh

from moba_jax import jsonfiles, sharding as shd
from moba_jax.attention import import_kinds
from moba_jax.train import checkpointing, optim, state as st
from moba_jax.train.checkpointing import CheckpointError


@dataclasses.dataclass
class LoadedRun:
    config: ml_collections.ConfigDict
    spec: st.ModelSpec
    params: dict
    step: int
    meta: dict
    mesh: Mesh
    rules: tuple = shd.DEFAULT_RULES   # the run's logical-axis sharding rules


def read_run_config(run_dir: str) -> tuple[ml_collections.ConfigDict, dict]:
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise CheckpointError(f"{run_dir} is not a run directory (no config.json); point "
                              "--workdir at a folder written by experiments.train or a sweep")
    resolved = jsonfiles.load(path, CheckpointError, "fix it (experiments.train writes it when "
                              "a run starts), or train the run again in a fresh --workdir")
    import_kinds(resolved.get("attention_kinds", {}))   # a user's own kinds, if any
    return ml_collections.ConfigDict(resolved["config"]), resolved


def load_run(run_dir: str, step: int | None = None, mesh: Mesh | None = None) -> LoadedRun:
    config, resolved = read_run_config(run_dir)
    ckpt = checkpointing.Checkpointer(os.path.join(run_dir, "checkpoints"))
    steps = ckpt.all_steps()
    if not steps:
        raise CheckpointError(f"{run_dir} has no checkpoints (checkpoints/ is empty or missing)")
    step = max(steps) if step is None else int(step)
    mesh = mesh or shd.make_mesh(data=-1)
    spec = st.model_spec(config.model, config.train.seed)
    tx, _ = optim.make_optimizer(config.train, resolved["steps"], spec.param_shapes, spec.metadata)
    rules = shd.rules_from_config(config.get("mesh", {}).get("rules"))
    shardings = st.state_shardings(spec, tx, mesh, rules)
    with shd.activation_sharding(mesh, rules):
        state, _, meta = ckpt.restore(step, st.abstract_state(spec, tx, shardings))
    ckpt.close()
    return LoadedRun(config, spec, state["params"], step, meta, mesh, rules)
