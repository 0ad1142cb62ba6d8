"""The train state as plain pytrees, and its shardings.

The NNX model is split once into a static ``graphdef`` and a pure-dict
parameter tree; the train state is ``{"params", "opt_state", "step"}`` of
plain arrays, which is what ``jit``, ``NamedSharding`` and orbax see.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from moba_jax import sharding as shd
from moba_jax.model import TransformerLM


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """Static description of a model: how to rebuild it from a parameter tree."""
    graphdef: Any
    param_shapes: Any      # pure dict of ShapeDtypeStruct
    logical_axes: Any      # pure dict of tuples of logical names
    metadata: Any          # pure dict of metadata dicts (weight_decay, ...)

    def apply(self, params, tokens_BT, positions_BT=None):
        return nnx.merge(self.graphdef, params)(tokens_BT, positions_BT)


def model_spec(model_cfg, seed: int = 0) -> ModelSpec:
    abstract = nnx.eval_shape(lambda: TransformerLM(model_cfg, rngs=nnx.Rngs(seed)))
    graphdef, state = nnx.split(abstract)
    is_var = lambda x: isinstance(x, nnx.Variable)
    meta = jax.tree.map(lambda v: dict(v.get_metadata()), state, is_leaf=is_var)
    shapes = nnx.to_pure_dict(state)
    shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), shapes)
    meta = nnx.to_pure_dict(meta) if not isinstance(meta, dict) else meta
    meta = _pure(meta)
    axes = jax.tree.map(lambda m: tuple(m.get("logical_axes", ())) or None, meta,
                        is_leaf=lambda x: isinstance(x, dict) and "logical_axes" in x)
    return ModelSpec(graphdef, shapes, axes, meta)


def _pure(tree):
    """State-of-metadata -> nested dict with the same keys as ``to_pure_dict``."""
    if isinstance(tree, (dict, nnx.State)):
        return {k: _pure(v) for k, v in tree.items()}
    return tree


def init_params(model_cfg, seed: int):
    model = TransformerLM(model_cfg, rngs=nnx.Rngs(seed))
    return nnx.to_pure_dict(nnx.state(model))


def param_shardings(spec: ModelSpec, mesh: Mesh, rules=shd.DEFAULT_RULES):
    return jax.tree.map(
        lambda names, s: NamedSharding(mesh, shd.logical_to_spec(names, rules, mesh, s.shape)),
        spec.logical_axes, spec.param_shapes,
        is_leaf=lambda x: x is None or (isinstance(x, tuple) and all(isinstance(n, str) for n in x)))


def _key_name(k):
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return getattr(k, attr)
    return str(k)


def state_shardings(spec: ModelSpec, tx, mesh: Mesh, rules=shd.DEFAULT_RULES):
    """Shardings of ``{"params", "opt_state", "step"}``: optimizer moments follow
    their parameter's sharding, optimizer scalars are replicated.

    A moment is recognised by its key path ending in its parameter's key path with the
    parameter's shape (optimizer states nest copies of the parameter tree, partitioned
    ones such as Muon's with masked leaves), which works for any optax chain.
    """
    p_sh = param_shardings(spec, mesh, rules)
    by_path = {}
    for (path, shape), sh in zip(jax.tree_util.tree_flatten_with_path(spec.param_shapes)[0],
                                 jax.tree.leaves(p_sh)):
        by_path[tuple(_key_name(k) for k in path)] = (shape.shape, sh)
    depths = sorted({len(p) for p in by_path}, reverse=True)
    replicated = NamedSharding(mesh, P())

    def match(path, leaf):
        names = tuple(_key_name(k) for k in path)
        for n in depths:
            hit = by_path.get(names[-n:]) if len(names) >= n else None
            if hit is not None and hit[0] == leaf.shape:
                return hit[1]
        return replicated

    opt_shapes = jax.eval_shape(tx.init, spec.param_shapes)
    opt_sh = jax.tree_util.tree_map_with_path(match, opt_shapes)
    return {"params": p_sh, "opt_state": opt_sh, "step": replicated}


def abstract_state(spec: ModelSpec, tx, shardings):
    shapes = {"params": spec.param_shapes,
              "opt_state": jax.eval_shape(tx.init, spec.param_shapes),
              "step": jax.ShapeDtypeStruct((), jnp.int32)}
    return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                        shapes, shardings)


def create_state(model_cfg, tx, seed: int, shardings):
    """Initialises parameters and optimizer state directly in their shardings."""
    def init():
        params = init_params(model_cfg, seed)
        return {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    return jax.jit(init, out_shardings=shardings)()
