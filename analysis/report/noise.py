"""Validation-noise part of the multiplier section: the runs' final-point standard errors
against the arms' differences at matched compute, and how far that noise moves each arm's
envelope law (:mod:`analysis.fits.noise`)."""
from __future__ import annotations

import math

import numpy as np

from analysis import fits
from analysis.report.blocks import Bullets, Heading, Para, Table, fmt
from analysis.results import AnalysisError
from analysis.units import CONVENTION_NAMES, LOSS_UNIT

NOISE_SIMS = 200    # noisy replicas of each arm's curves


def median_final_se(runs) -> float | None:
    """Median standard error of the runs' final evaluations (None: none logged one)."""
    ses = [r.final_se for r in runs if r.final_se is not None]
    return float(np.median(ses)) if ses else None


def envelope_shifts(sweep, convention, laws, budgets, sims: int = NOISE_SIMS) -> dict[str, np.ndarray]:
    """``{arm: mean shift of its envelope law at budgets}`` under noise of the logged
    standard errors, for each arm with a law whose runs all logged them. The envelope is
    restricted as the figure's fit was (from the smallest run's final compute on, unless
    that fit fell back to the whole envelope)."""
    out = {}
    for i, arm in enumerate(sweep.arms):
        runs = sweep.by_arm(arm)
        if arm not in laws or any(r.val_loss_se is None for r in runs):
            continue
        lo = min(r.final_compute(convention) for r in runs)
        C_min = lo if laws[arm].C_range[0] >= lo else None
        try:
            out[arm] = fits.envelope_noise_shift(sweep.curves(arm, convention),
                                                 {r.run: r.val_loss_se for r in runs}, budgets,
                                                 C_min, sims=sims, seed=i)
        except AnalysisError:
            continue
    return out


def _shift(arm, shifts, se, n_runs) -> float:
    """The arm's largest envelope shift over the budgets (magnitude); without a simulation,
    the bound for a minimum over as many points of one loss as the arm has runs."""
    if arm in shifts:
        return float(np.max(np.abs(shifts[arm])))
    return se * fits.expected_min_shift(n_runs)


def add_noise(blocks, sweep, convention, comps, laws, budgets, sims: int = NOISE_SIMS) -> None:
    """Appends the "Validation noise and the envelope" subsection."""
    blocks.append(Heading(3, "Validation noise and the envelope"))
    finals = [r.final_se for r in sweep.runs if r.final_se is not None]
    if not finals:
        blocks.append(Para("No run logged the standard error of its validation loss "
                           "(`val_loss_se`, logged by runs trained since it was added), so the "
                           "noise of the points is unknown: retrain to know whether the arms' "
                           "differences exceed it."))
        return
    med = float(np.median(finals))
    missing = [r.run for r in sweep.runs if r.final_se is None]
    text = ("Each evaluation's loss is a mean over held-out sequences; its standard error (SE) is "
            "taken over sequences, the independent units (tokens within one are correlated). "
            f"The final points' median SE is **{fmt(med)}** {LOSS_UNIT} (range {fmt(min(finals))} "
            f"to {fmt(max(finals))}, {len(finals)} run(s)).")
    if missing:
        text += f" Runs without a logged SE (trained before `val_loss_se` existed): {', '.join(missing)}."
    blocks.append(Para(text))

    k = max(2, max(len(sweep.by_arm(a)) for a in sweep.arms))
    e2, ek = fits.expected_min_shift(2), fits.expected_min_shift(k)
    shifts = envelope_shifts(sweep, convention, laws, budgets, sims)
    more = f" and {ek:.2f} s for k = {k}" if k > 2 else ""
    blocks.append(Para(
        "The lower envelope is a running minimum, and a minimum over noisy points sits low: of "
        f"k points with one true loss and SE s, the smallest lies on average {e2:.2f} s below it "
        f"for k = 2{more} (k = {k}: the most runs of one arm; never more than "
        f"s sqrt(2 ln k) = {fits.min_shift_bound(k):.2f} s), i.e. {fmt(med * ek)} "
        f"{LOSS_UNIT} at the median SE where that many runs compete at one compute. Measured on the sweep: fresh Gaussian noise of each "
        f"point's own SE added to every curve ({sims} replicas), each arm's envelope law refitted; "
        "the envelope shift is the law's mean change, the largest over the budgets (negative: "
        f"down; {CONVENTION_NAMES[convention]} FLOPs)."))
    rows = []
    for arm in sweep.arms:
        runs = sweep.by_arm(arm)
        se = median_final_se(runs)
        sh = shifts.get(arm)
        shift = "–" if sh is None else fmt(float(sh[np.argmax(np.abs(sh))]), 2)
        rows.append((arm, f"{sum(r.final_se is not None for r in runs)} of {len(runs)}", fmt(se),
                     shift))
    blocks.append(Table(("arm", "runs with SE", "median final-point SE", "envelope shift from noise"),
                        tuple(rows)))

    if not comps:
        return
    items, resolved, judged = [], 0, 0
    B = np.asarray(budgets, dtype=float)
    for c in comps:
        a, b = c.baseline, c.improved
        if a not in laws or b not in laws:
            items.append(f"{b} vs {a}: no envelope law for an arm, no comparison")
            continue
        d = float(np.median(np.abs(laws[a](B) - laws[b](B))))
        sa, sb = median_final_se(sweep.by_arm(a)), median_final_se(sweep.by_arm(b))
        if sa is None or sb is None:
            items.append(f"{b} vs {a}: median |ΔL| {fmt(d)}; an arm logged no SE, noise unknown")
            continue
        floor = 2 * math.hypot(sa, sb) + max(_shift(a, shifts, sa, len(sweep.by_arm(a))),
                                             _shift(b, shifts, sb, len(sweep.by_arm(b))))
        judged += 1
        if d > floor:
            resolved += 1
            reading = f"{d / floor:.1f}x the noise floor: larger than the noise"
        else:
            reading = "within the noise floor: the losses alone do not resolve it"
        items.append(f"{b} vs {a}: median |ΔL| {fmt(d)} = {d / med:.1f}x the median SE; noise floor "
                     f"{fmt(floor)}; {reading}")
    blocks.append(Para("At matched compute (the multiplier's budgets) the arms' envelope laws differ "
                       "by |ΔL| below; the noise floor of a difference is 2 sqrt(s_A^2 + s_B^2) (two "
                       "points' 95% noise, s: each arm's median final-point SE) plus the larger "
                       "envelope shift of the two arms:"))
    blocks.append(Bullets(tuple(items)))
    if judged:
        blocks.append(Para(f"{resolved} of {judged} compared difference(s) exceed their noise floor. "
                           "This is measurement noise only; the multiplier's interval above also "
                           "covers which runs happen to form each frontier."))
