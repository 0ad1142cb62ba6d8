"""Position-wise section: one law per position bucket and arm (MoBA Table 3)."""
from __future__ import annotations

import warnings

from analysis import fits, plots, position
from analysis.report.blocks import Bullets, Heading, Image, Para, Table, fmt, fmt_ci
from analysis.results import AnalysisError
from analysis.units import CONVENTION_NAMES, CONVENTIONS, LOSS_UNIT


def add_position_wise(blocks, figures, sweep, fig_dir, convention, bootstrap, echo):
    """Appends the position-wise section (a note when the runs were not evaluated per bucket)."""
    blocks.append(Heading(2, "Position-wise laws"))
    pos = position.load_position_evals(sweep, convention)
    skipped = [f"{run}: {why}" for run, why in pos.skipped.items()]
    if not pos.bucket_data:
        blocks.append(Para("No position-wise evaluations found (`RUN/eval/step_*.json`, written by "
                           "`experiments.evaluate`); evaluate the runs' final checkpoints to get "
                           "one law per position bucket (MoBA Table 3)."))
        if skipped:
            blocks += [Para("Skipped runs:"), Bullets(tuple(skipped))]
        return
    data, dropped = position.fittable(pos.bucket_data)
    blocks.append(Para(f"Latest evaluation of {len(pos.steps)} run(s) at one setting, the one "
                       f"evaluated by the most runs: {pos.setting.describe()}. One point per run at "
                       f"its compute ({CONVENTION_NAMES[convention]} FLOPs); `L = a C^b` per bucket "
                       "and arm."))
    if skipped:
        blocks += [Para("Skipped runs:"), Bullets(tuple(skipped))]
    if dropped:
        blocks += [Para("Not fitted:"), Bullets(tuple(dropped))]
    if not data:
        blocks.append(Para("No bucket has enough evaluated runs for a fit, so no figure."))
        return
    echo(f"position-wise laws for {len(data)} bucket(s)")
    res = plots.plot_position_wise(data, fig_dir / "position_wise", convention=convention, bootstrap=bootstrap,
                                   labels=sweep.arm_display, colours=sweep.arm_colour)
    figures.append(res.paths[0])
    blocks.append(Image(res.paths[0], "Loss per position bucket vs compute, one panel per bucket; "
                                      f"dashed: fitted power laws. Setting: {pos.setting.describe()}."))
    rows = [(label, arm, CONVENTION_NAMES[convention], fmt_ci(law.a, law.a_ci),
             fmt_ci(law.b, law.b_ci, 3), str(len(law.residuals)), fmt(law.rmse))
            for label, per_arm in res.fits.items() for arm, law in per_arm.items()]
    for conv in CONVENTIONS:
        if conv != convention:
            rows += _other_rows(sweep, conv, pos.setting, bootstrap)
    blocks.append(Table(("bucket", "arm", "FLOPs", "a [95% CI]", "b [95% CI]", "runs",
                         "residual RMS (log)"), tuple(rows)))
    blocks.append(Para(f"Each law on both FLOP conventions' axes; the figure uses "
                       f"{CONVENTION_NAMES[convention]} FLOPs. Losses in {LOSS_UNIT}."))


def _other_rows(sweep, convention, setting, bootstrap):
    """The per-bucket laws on ``convention``'s axis (same runs and setting), as table rows."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")       # the figure's own pass already reported
        data, _ = position.fittable(position.load_position_evals(sweep, convention, setting).bucket_data)
        rows = []
        for label, per_arm in data.items():
            for arm, (C, L) in per_arm.items():
                try:
                    law = fits.fit_power_law(C, L, bootstrap=bootstrap)
                except AnalysisError:
                    continue
                rows.append((label, arm, CONVENTION_NAMES[convention], fmt_ci(law.a, law.a_ci),
                             fmt_ci(law.b, law.b_ci, 3), str(len(law.residuals)), fmt(law.rmse)))
    return rows
