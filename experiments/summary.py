"""The end of a sweep worker's session: the figure and fitted laws, or what is left.

:func:`finish` takes the :class:`~moba_jax.sweep.worker.SweepOutcome` of
:func:`moba_jax.sweep.run_sweep`. The worker that sees the sweep complete (no run
running or pending) writes ``loss_vs_compute.png`` / ``.pdf`` and prints each arm's
law fitted on the lower envelope (arms named by their ``arm_display``), marking arms
with fewer finished runs than planned as incomplete and fitting no law through too
few runs ("not fitted: N runs"); a worker that leaves runs to others says how many;
failed runs are listed either way, one line each with its cause. Only process 0
prints or writes. :func:`finish` returns the worker's exit status.
"""
from __future__ import annotations

import collections
import os
import shutil
import tempfile
import uuid

EXIT_OK = 0
EXIT_FAILED_RUNS = 3    # every run ended, some failed: fix, then --retry_failed
EXIT_RUNS_LEFT = 4      # runs still owned by live workers (or pending): see --status


def finish(outcome, workdir: str, convention: str, echo=print) -> int:
    """Prints the end-of-sweep lines and, when no run is left, draws the figure.

    Returns 0 when every planned run finished, :data:`EXIT_FAILED_RUNS` when some
    failed, else :data:`EXIT_RUNS_LEFT` when runs are still running or pending.
    """
    if not outcome.main or outcome.dry_run:
        return EXIT_OK
    if outcome.complete:
        if outcome.rows:
            summarize(workdir, outcome.rows, convention, echo)
    else:
        left = outcome.unfinished
        echo(f"{len(left)} runs still running or pending ({', '.join(left)}); the worker that "
             "finishes the last run writes the figure; see --status")
    failed = outcome.failed
    if failed:
        echo(f"{len(failed)} runs failed: " + "; ".join(
            f"{s['plan'].name}: {(s['detail'] or '?').splitlines()[0]}" for s in failed)
             + " (fix the cause, then relaunch with --retry_failed)")
        return EXIT_FAILED_RUNS
    return EXIT_RUNS_LEFT if outcome.unfinished else EXIT_OK


def planned_runs(workdir: str) -> dict[str, int] | None:
    """Runs planned per arm by the config pinned in ``sweep.json`` (None without one)."""
    from moba_jax.sweep.plan import plan_sweep
    from moba_jax.sweep.state import load_pinned_config
    cfg = load_pinned_config(workdir)
    return collections.Counter(p.arm for p in plan_sweep(cfg)) if cfg is not None else None


def figure_is_current(workdir: str) -> bool:
    """Whether ``loss_vs_compute.png`` and ``.pdf`` were drawn after the results table
    (and ``sweep.json``) last changed: re-running a finished sweep then redraws nothing,
    so it works in a read-only directory."""
    def mtime(name):
        try:
            return os.stat(os.path.join(workdir, name)).st_mtime_ns
        except FileNotFoundError:
            return None
    figs = [mtime("loss_vs_compute" + ext) for ext in (".png", ".pdf")]
    inputs = [mtime(n) for n in ("results.jsonl", "sweep.json")]
    return None not in figs and min(figs) >= max(t or 0 for t in inputs)


def summarize(workdir: str, rows: list[dict], convention: str, echo=print) -> None:
    """Writes ``loss_vs_compute.png`` (unless it is current) and prints each arm's fitted
    law; arms with fewer finished runs than planned are marked incomplete."""
    from analysis import plots, results
    sweep = results.load_sweep(workdir)
    planned = planned_runs(workdir)
    out = os.path.join(workdir, "loss_vs_compute.png")
    current = figure_is_current(workdir)
    # Drawn beside the target (concurrent workers each in their own folder), then renamed
    # into place; a current figure is only re-fitted, its drawing thrown away.
    tmp_dir = tempfile.mkdtemp() if current else \
        os.path.join(workdir, f".figure.{uuid.uuid4().hex[:8]}")
    try:
        fig = plots.plot_loss_vs_compute(sweep, os.path.join(tmp_dir, "loss_vs_compute.png"),
                                         convention=convention, planned=planned)
        for ext in (".png", ".pdf") if not current else ():
            src = os.path.join(tmp_dir, "loss_vs_compute" + ext)
            if os.path.exists(src):
                os.replace(src, os.path.join(workdir, "loss_vs_compute" + ext))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    echo(f"figure: {out}" + (" (up to date)" if current else ""))
    echo(f"fitted laws on the lower envelope (C in PFLOP/s-days, {convention} FLOPs):")
    echo("  " + fig.summary().replace("\n", "\n  "))
    entropy = rows[0].get("unigram_entropy_nats") if rows else None
    if entropy is not None:
        best = min(rows, key=lambda r: r["final_val_loss"])
        echo(f"byte-unigram entropy of the corpus: {entropy:.4f} nats/token; best validation "
             f"loss: {best['final_val_loss']:.4f} ({best['run']})")
