"""Retrieval-probe section: needle-in-a-haystack and MQAR accuracy, one small table per arm.

Reads the ``retrieval`` block of each run's evaluation files (``RUN/eval/step_*.json``,
written by ``experiments.evaluate --config.needle_lengths=... --config.mqar_lengths=...``);
per run, its latest file with probe results. A needle cell is the accuracy (all five
digits right) averaged over the evaluated depths; an MQAR cell is the fraction of
queries answered right, per context length and number of key-value pairs.
"""
from __future__ import annotations


from analysis import position
from analysis.report.blocks import Heading, Para, Table, fmt


def probe_cells(retrieval: dict) -> dict[str, float]:
    """``{column: accuracy}`` of one evaluation's ``retrieval`` block."""
    cells = {}
    n = retrieval.get("needle")
    if isinstance(n, dict):
        for length, accs in zip(n.get("lengths", []), n.get("accuracy", [])):
            if accs:
                cells[f"needle L={length}"] = sum(accs) / len(accs)
    m = retrieval.get("mqar")
    if isinstance(m, dict):
        for length, accs in zip(m.get("lengths", []), m.get("accuracy", [])):
            for pairs, acc in zip(m.get("pairs", []), accs):
                cells[f"mqar L={length} x{pairs}"] = acc
    return cells


def _column_order(column: str) -> tuple:
    """``"mqar L=512 x16"`` -> ``("mqar", 512, 16)``: probe, then length, then pairs."""
    parts = column.split()
    return parts[0], int(parts[1][2:]), int(parts[2][1:]) if len(parts) > 2 else 0


def load_probe_scores(sweep) -> dict[str, list[tuple[str, int, dict[str, float], str]]]:
    """``{arm: [(run, step, cells, trials), ...]}``: each run's latest evaluation with probes."""
    out: dict[str, list] = {}
    if sweep.eval_run_dir("") is None or not sweep.eval_run_dir("").is_dir():
        return out
    for run in sweep.runs:
        best = None
        for step, path in position.eval_files(sweep.eval_run_dir(run.run)):
            try:
                data = position.read_eval_json(path)
            except ValueError:
                continue                      # the position-wise section reports bad files
            cells = probe_cells(data.get("retrieval") or {})
            if cells and (best is None or step >= best[1]):
                r = data["retrieval"]
                trials = sorted({str(p.get("trials")) for p in r.values() if isinstance(p, dict)})
                best = (run.run, step, cells, "/".join(trials))
        if best is not None:
            out.setdefault(run.arm, []).append(best)
    return out


def add_probes(blocks, sweep) -> None:
    """Appends the probe section (nothing when no run was evaluated with probes)."""
    scores = load_probe_scores(sweep)
    if not scores:
        return
    blocks.append(Heading(2, "Retrieval probes"))
    blocks.append(Para("Latest evaluation with probes of each run. Needle: accuracy (all 5 digits "
                       "right, chance 1e-5) averaged over depths; MQAR: fraction of queries "
                       "answered right (chance 0.1), per context length L and pairs x."))
    for arm in sweep.arms:
        if arm not in scores:
            continue
        rows = scores[arm]
        cols = sorted({c for _, _, cells, _ in rows for c in cells},
                      key=_column_order)
        blocks.append(Para(f"**{sweep.arm_display.get(arm, arm)}**"))
        blocks.append(Table(("run", "step", "trials", *cols),
                            tuple((run, str(step), trials, *(fmt(cells.get(c)) for c in cols))
                                  for run, step, cells, trials in rows)))
