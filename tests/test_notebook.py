"""Executes notebooks/analysis.ipynb top to bottom on the tiny sweep (a fresh kernel, ~10 s
plus the shared tiny sweep). Needs the dev extra (nbclient, nbformat, ipykernel).

Run: ``pytest tests/test_notebook.py``.
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import nbclient  # dev extra: a missing install should fail here, not skip silently
import nbformat

from analysis import fits, report, results
from tests.helpers import REPO

NOTEBOOK = os.path.join(REPO, "notebooks", "analysis.ipynb")


def _text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", ""))
        data = out.get("data", {})
        parts.append(data.get("text/markdown", "") + data.get("text/plain", ""))
    return "".join(parts)


def test_notebook_runs_on_tiny_sweep(tiny_sweep_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("MOBA_JAX_SWEEP_DIR", str(tiny_sweep_dir))
    monkeypatch.setenv("MOBA_JAX_FIGURE_DIR", str(tmp_path / "figures"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    start = time.monotonic()
    nbclient.NotebookClient(nb, timeout=60, kernel_name="python3",
                            resources={"metadata": {"path": REPO}}).execute()
    elapsed = time.monotonic() - start
    assert elapsed < 60, f"the notebook took {elapsed:.0f} s; keep it under a minute on the tiny sweep"

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "google.colab" in code[0].source and "REPO_URL" in code[0].source
    everything = "\n".join(_text(c) for c in code)
    sweep = results.load_sweep(tiny_sweep_dir)
    for run in sweep.runs:
        assert run.run in everything                  # the runs table
    assert "PFLOP/s-days" in everything and "L = " in everything
    assert len(sweep.arms) >= 2, "the tiny sweep is meant to compare arms"
    from analysis.report.pairs import KIMI_STYLE, choose_comparisons
    comps = choose_comparisons(sweep.arms, labels=sweep.arm_display)   # the report's pairs
    assert comps, "the tiny sweep's arms make a papers' pair"
    base = comps[0].baseline
    for comp in comps:
        assert f"{comp.improved} over {comp.baseline} (envelope laws)" in everything

    if any(report.chinchilla_skip_reason(sweep, a) for a in sweep.arms):
        assert "no Chinchilla fit" in everything      # skipped, with the reason
    images = sum("image/png" in o.get("data", {}) for c in code for o in c.get("outputs", []))
    # loss vs compute, and a Kimi-style chart per Kimi-style pair (MoBA vs full is drawn
    # MoBA's way, as the loss-vs-compute figure)
    assert images >= 1 + sum(c.style == KIMI_STYLE for c in comps)
    assert (tmp_path / "figures" / "report" / "report.html").is_file()
    assert not (tiny_sweep_dir / "notebook_figures").exists()

    # Intervals as the report prints them: the multiplier rows of the report the notebook
    # wrote (same sweep, same bootstrap) appear in its printed lines with the same interval
    # cell ("–" where there is none or it means nothing), and no zero-width interval shows.
    md = (tmp_path / "figures" / "report" / "report.md").read_text()
    improved = comps[0].improved
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in md.splitlines()
            if l.startswith(f"| {improved} vs {base} |")][:len(report.default_budgets(sweep))]
    assert rows, md
    for _, C, ratio, interval, _ in rows:
        assert f"at {C} PFLOP/s-days: {ratio} {interval}" in everything, (C, ratio, interval)
    if min(len(sweep.by_arm(a)) for a in sweep.arms) < fits.MIN_BOOTSTRAP_RUNS:
        assert all(interval == "–" for *_, interval, _ in rows), rows
    assert not re.search(r"\[(-?[\d.]+(?:e-?\d+)?), \1\]", everything), everything
    assert not re.search(r"\b(-?[\d.]+(?:e-?\d+)?)\.\.\1\b", everything), everything


def test_sweep_dir_defaults_to_runs_scaling_under_the_repository_root(tmp_path, monkeypatch):
    """Jupyter starts the notebook in notebooks/; the sweep command writes runs/scaling under
    the repository root. The settings cell finds it from either folder; the environment
    variable wins; outside a checkout it is runs/scaling under the current folder."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    settings = next(c.source for c in nb.cells
                    if c.cell_type == "code" and "SWEEP_DIR =" in c.source)
    repo = tmp_path / "repo"
    (repo / "notebooks").mkdir(parents=True)
    (repo / "notebooks" / "analysis.ipynb").write_text(open(NOTEBOOK).read())
    (repo / "runs" / "scaling").mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()

    def sweep_dir(cwd):
        monkeypatch.chdir(cwd)
        scope: dict = {}
        exec(settings, scope)
        return Path(scope["SWEEP_DIR"]).resolve()

    monkeypatch.delenv("MOBA_JAX_SWEEP_DIR", raising=False)
    assert sweep_dir(repo / "notebooks") == repo / "runs" / "scaling"
    assert sweep_dir(repo) == repo / "runs" / "scaling"
    assert sweep_dir(outside) == outside / "runs" / "scaling"
    monkeypatch.setenv("MOBA_JAX_SWEEP_DIR", str(outside))
    assert sweep_dir(repo / "notebooks") == outside
