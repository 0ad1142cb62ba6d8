"""Device meshes and logical-axis sharding.

Every parameter carries a tuple of *logical* axis names in its ``logical_axes``
metadata (for example ``("embed", "mlp")``) and activations are annotated with
names such as ``("batch", "seq", "embed")``. One rules table maps logical names to
the physical mesh axes ``data``, ``fsdp`` and ``tensor``; changing the
parallelism of a run is a matter of changing the mesh shape in the config, never
the model code.

Default rules (logical name -> mesh axes); a run's rules live in its config as
``mesh.rules`` (one string field per logical name, mesh axes comma-separated, ``""``
for replicated), so any run can override them, e.g. ``--config.mesh.rules.mlp=fsdp``
or ``--config.mesh.rules.embed=""``:

===========  ===================  =============================================
logical      mesh axes            meaning
===========  ===================  =============================================
batch        (data, fsdp)         examples of the global batch
embed        fsdp                 model width of weights (FSDP / ZeRO-3 style)
vocab        tensor               vocabulary rows of embedding / logits
mlp          tensor               hidden units of the MLP
q_heads      tensor               query heads
kv_heads     tensor               key/value heads
expert       fsdp                 experts of a mixture-of-experts MLP (expert
                                  parallelism: each device of the axis holds
                                  E / size experts; ``""`` replicates them, and
                                  their ``embed`` axis then takes ``fsdp``)
===========  ===================  =============================================

Names not in the table (``seq``, ``head_dim``, ``norm``, ...) are replicated.
A mesh axis of size 1 costs nothing, so the same rules serve 1 device and a pod.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("q_heads", "tensor"),
    ("kv_heads", "tensor"),
    ("expert", "fsdp"),
)


class MeshConfigError(ValueError):
    """The requested mesh does not fit the available devices."""


def default_rules_config() -> dict[str, str]:
    """``DEFAULT_RULES`` as config fields: ``{logical name: "axis,axis"}``."""
    return {name: axes if isinstance(axes, str) else ",".join(axes) for name, axes in DEFAULT_RULES}


def rules_from_config(rules_cfg) -> tuple[tuple[str, Any], ...]:
    """The rules table of a config's ``mesh.rules`` (``None``: the defaults).

    Each field maps a logical axis name to mesh axes, comma-separated (``"data,fsdp"``),
    or to ``""`` / ``"none"`` for a replicated axis.
    """
    if rules_cfg is None:
        return DEFAULT_RULES
    items = rules_cfg.items() if hasattr(rules_cfg, "items") else rules_cfg
    rules = []
    for name, value in items:
        value = "" if value is None else str(value)
        axes = tuple(a.strip() for a in value.split(",") if a.strip() and a.strip().lower() != "none")
        bad = [a for a in axes if a not in MESH_AXES]
        if bad:
            raise MeshConfigError(
                f"mesh.rules.{name}={value!r}: unknown mesh axis {bad[0]!r}; use mesh axes "
                f"from {MESH_AXES}, comma-separated, or \"\" to replicate")
        if axes:
            rules.append((name, axes[0] if len(axes) == 1 else axes))
    return tuple(rules)


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a ``(data, fsdp, tensor)`` mesh over ``devices`` (default: all).

    ``-1`` for ``data`` means "all devices not used by fsdp and tensor".
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if data == -1:
        if fsdp <= 0 or tensor <= 0 or n % (fsdp * tensor):
            raise MeshConfigError(
                f"mesh: fsdp*tensor={fsdp * tensor} does not divide the {n} available "
                "devices; set --config.mesh.fsdp/--config.mesh.tensor to divisors of it")
        data = n // (fsdp * tensor)
    shape = (data, fsdp, tensor)
    if min(shape) <= 0:
        raise MeshConfigError(f"mesh: axis sizes must be positive, got data={data} "
                              f"fsdp={fsdp} tensor={tensor}")
    if int(np.prod(shape)) != n:
        raise MeshConfigError(
            f"mesh: data*fsdp*tensor = {data}*{fsdp}*{tensor} = {int(np.prod(shape))} but "
            f"{n} devices are available; set --config.mesh.data=-1 to use all of them, or "
            "simulate more CPU devices with JAX_NUM_CPU_DEVICES=N")
    dev_array = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(dev_array, MESH_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(names: Sequence[str | None] | None,
                    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
                    mesh: Mesh | None = None,
                    shape: Sequence[int] | None = None) -> P:
    """Maps logical axis names to a ``PartitionSpec`` with ``rules``.

    A mesh axis is used at most once per spec (the first logical axis that asks
    for it wins). When ``mesh`` and ``shape`` are given, a mesh axis is dropped
    for a dimension it does not divide (the dimension is then replicated), so
    small test models still run on large meshes.
    """
    if names is None:
        return P()
    table = dict(rules)
    used: set[str] = set()
    out = []
    for i, name in enumerate(names):
        axes = table.get(name) if name is not None else None
        if axes is None:
            out.append(None)
            continue
        axes = (axes,) if isinstance(axes, str) else tuple(axes)
        keep = []
        size = 1
        for ax in axes:
            if ax in used:
                continue
            if mesh is not None and shape is not None:
                if shape[i] % (size * mesh.shape[ax]):
                    continue
                size *= mesh.shape[ax]
            keep.append(ax)
        used.update(keep)
        out.append(None if not keep else (keep[0] if len(keep) == 1 else tuple(keep)))
    return P(*out)


# --- activation constraints -------------------------------------------------

_ACTIVE: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar(
    "moba_jax_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES):
    """Within this context, :func:`constrain` pins activations to the mesh."""
    token = _ACTIVE.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """``with_sharding_constraint`` by logical names; a no-op outside a mesh context."""
    active = _ACTIVE.get()
    if active is None:
        return x
    mesh, rules = active
    spec = logical_to_spec(names, rules, mesh, x.shape)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def tree_shardings(logical_tree: Any, shapes_tree: Any, mesh: Mesh,
                   rules: Sequence[tuple[str, Any]] = DEFAULT_RULES) -> Any:
    """NamedShardings for a pytree, from a matching pytree of logical names."""
    is_names = lambda x: x is None or (isinstance(x, tuple) and all(
        isinstance(n, (str, type(None))) for n in x))
    return jax.tree.map(
        lambda names, s: NamedSharding(mesh, logical_to_spec(names, rules, mesh, s.shape)),
        logical_tree, shapes_tree, is_leaf=is_names)
