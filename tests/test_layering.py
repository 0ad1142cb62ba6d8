"""The import structure: layers import only downward, no cycles, files of a readable size.

Layers (style.md, point 14): ``experiments/`` -> ``moba_jax/`` -> ``kernels/``;
``analysis/`` reads plain result files and imports neither ``moba_jax`` nor
``kernels``; ``configs/`` may import ``moba_jax`` (configs are code). Every import
counts, including those inside functions: a lazy import is still a dependency.
"""
from __future__ import annotations

import ast
import os

import pytest

from tests.helpers import REPO

PACKAGES = ("moba_jax", "kernels", "analysis", "experiments", "configs")
# package -> top-level packages of this repo it must not import
FORBIDDEN = {
    "kernels": {"moba_jax", "analysis", "experiments", "configs"},
    "moba_jax": {"analysis", "experiments"},
    "analysis": {"moba_jax", "kernels", "experiments", "configs"},
    "configs": {"analysis", "experiments"},
}
MAX_LINES = 420   # "about 400" (style.md: one concern per file, roughly 50 to 400 lines)


def source_files():
    for pkg in PACKAGES:
        for root, _, files in os.walk(os.path.join(REPO, pkg)):
            for f in sorted(files):
                if f.endswith(".py"):
                    path = os.path.join(root, f)
                    yield os.path.relpath(path, REPO)


def module_name(rel: str) -> str:
    mod = rel[:-3].replace(os.sep, ".")
    return mod[:-len(".__init__")] if mod.endswith(".__init__") else mod


def imported_modules(rel: str) -> set[str]:
    """Absolute names of the repo modules ``rel`` imports (``from a import b`` gives
    ``a.b`` when that is a module, else ``a``)."""
    tree = ast.parse(open(os.path.join(REPO, rel)).read(), rel)
    known = {module_name(r) for r in source_files()}
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out.update(n for n in names if n.split(".")[0] in PACKAGES)
    return out


def test_layers_import_only_downward():
    bad = []
    for rel in source_files():
        pkg = rel.split(os.sep)[0]
        for mod in imported_modules(rel):
            if mod.split(".")[0] in FORBIDDEN.get(pkg, ()):
                bad.append(f"{rel} imports {mod}")
    assert not bad, "imports that run against the layering:\n" + "\n".join(bad)


def test_no_import_cycles():
    graph = {module_name(r): {m for m in imported_modules(r)} for r in source_files()}
    # A package's __init__ is imported whenever one of its modules is.
    for mod in list(graph):
        for dep in list(graph[mod]):
            parts = dep.split(".")
            graph[mod].update(".".join(parts[:i]) for i in range(1, len(parts))
                              if ".".join(parts[:i]) in graph and ".".join(parts[:i]) != mod
                              and not mod.startswith(".".join(parts[:i]) + "."))
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d not in graph or d == m:
                continue
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("rel", list(source_files()))
def test_source_file_size(rel):
    n = sum(1 for _ in open(os.path.join(REPO, rel)))
    assert n <= MAX_LINES, f"{rel} has {n} lines; split it by concern (about 400 at most)"


def test_analysis_units_agree_with_the_model_side():
    from analysis import units as reader
    from moba_jax import units as writer
    assert reader.FLOPS_PER_PFLOP_S_DAY == writer.PFLOP_S_DAY
    assert set(reader.CONVENTIONS) <= set(writer.CONVENTIONS)
