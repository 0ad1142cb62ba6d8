"""The end of a sweep worker's session: the figure and fitted laws, or what is left.

:func:`finish` takes the :class:`~moba_jax.sweep.worker.SweepOutcome` of
:func:`moba_jax.sweep.run_sweep`. The worker that sees the sweep complete (no run
running or pending) writes ``loss_vs_compute.png`` / ``.pdf`` and prints each arm's
law fitted on the lower envelope (arms named by their ``arm_display``); a worker that
leaves runs to others says how many; failed runs are listed either way. Only process
0 prints or writes.
"""
from __future__ import annotations

import os
import shutil
import uuid


def finish(outcome, workdir: str, convention: str, echo=print) -> None:
    """Prints the end-of-sweep lines and, when the sweep is complete, draws its figure."""
    if not outcome.main or outcome.dry_run:
        return
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
            f"{s['plan'].name}: {s['detail']}" for s in failed)
             + " (fix the cause, then relaunch with --retry_failed)")


def summarize(workdir: str, rows: list[dict], convention: str, echo=print) -> None:
    """Writes ``loss_vs_compute.png`` and prints each arm's fitted law."""
    from analysis import plots, results
    sweep = results.load_sweep(workdir)
    out = os.path.join(workdir, "loss_vs_compute.png")
    tmp_dir = os.path.join(workdir, f".figure.{uuid.uuid4().hex[:8]}")  # concurrent workers
    try:
        fig = plots.plot_loss_vs_compute(sweep, os.path.join(tmp_dir, "loss_vs_compute.png"),
                                         convention=convention)
        for ext in (".png", ".pdf"):
            src = os.path.join(tmp_dir, "loss_vs_compute" + ext)
            if os.path.exists(src):
                os.replace(src, os.path.join(workdir, "loss_vs_compute" + ext))
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    echo(f"figure: {out}")
    echo(f"fitted laws on the lower envelope (C in PFLOP/s-days, {convention} FLOPs):")
    echo("  " + fig.summary().replace("\n", "\n  "))
    entropy = rows[0].get("unigram_entropy_nats") if rows else None
    if entropy is not None:
        best = min(rows, key=lambda r: r["final_val_loss"])
        echo(f"byte-unigram entropy of the corpus: {entropy:.4f} nats/token; best validation "
             f"loss: {best['final_val_loss']:.4f} ({best['run']})")
