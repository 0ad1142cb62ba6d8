"""The sweep report: on the real tiny sweep (CLI), on synthetic sweeps (position-wise evals,
Chinchilla), and its one-line errors.

Run: ``pytest tests/test_report.py`` (~40 s with the shared tiny sweep, CPU only).
"""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest

from analysis import plots, position, report, results
from analysis.results import AnalysisError, AnalysisWarning
from tests.helpers import run_cli

PFD = 8.64e19  # FLOPs per PFLOP/s-day
BUCKETS = (("0k-2k", 0, 2048, 0.30), ("2k-4k", 2048, 4096, 0.12), ("4k-6k", 4096, 6144, 0.06),
           ("6k-8k", 6144, 8192, 0.03))


def _true_loss(n, d, scale):
    return scale * (1.8 + 400.0 / n ** 0.34 + 1800.0 / d ** 0.36)


def write_sweep(root, runs_per_arm=None, scales=None, evals=False, seed=0, styles=None, se=None):
    """A sweep directory in the runner's format with a Chinchilla-like ground truth.

    ``runs_per_arm``: {arm: number of sizes}; ``scales``: {arm: loss multiplier}. Tokens per
    parameter cycle through 10, 25, 40 so that N and D vary independently. With ``evals``
    each run gets two position-wise eval files (an early, worse one and the final one).
    ``styles``: {arm: {"arm_display": ..., "arm_colour": ...}} written into each row, as
    the sweep does (default: none, as in an old sweep). ``se``: {arm: standard error}
    logged as every evaluation's ``val_loss_se`` (default: none, as in an old sweep).
    """
    runs_per_arm = runs_per_arm or {"full": 4, "moba": 4}
    scales = scales or {}
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for arm, n_runs in runs_per_arm.items():
        scale = scales.get(arm, 1.0)
        for i, n in enumerate(np.geomspace(5e6, 2e8, n_runs)):
            n = int(n)
            d = int(n * (10, 25, 40)[i % 3])
            run = f"{arm}_s{i}"
            (root / run).mkdir(exist_ok=True)
            f6, fex = 6.0 * n, 7.8 * n
            steps, lines = 100, []
            for step in range(10, steps + 1, 10):
                tok = d * step / steps
                lines.append(json.dumps({"step": step, "tokens": tok, "flops_6nd": f6 * tok,
                                         "flops_exact": fex * tok, "train_loss": 3.0,
                                         "val_loss": _true_loss(n, tok, scale)
                                         * (1 + 0.001 * rng.standard_normal()),
                                         **({"val_loss_se": se[arm]} if se else {})}))
            (root / run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            final = _true_loss(n, d, scale)
            records.append({"run": run, "arm": arm, "size": f"s{i}", "status": "done",
                            "n_params_nonembed": n, "n_params": n + 10**6, "tokens": d,
                            "budget_flops": fex * d, "convention": "exact", "final_val_loss": final,
                            **(styles or {}).get(arm, {})})
            if evals:
                for step, worse in ((50, 0.5), (steps, 0.0)):
                    _write_eval(root / run, run, step, final + worse, fex * d * step / steps,
                                f6 * d * step / steps)
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _write_eval(run_dir, run, step, loss, flops_exact, flops_6nd):
    buckets = [{"label": lb, "start": s, "end": e, "loss": loss + off, "tokens": 1000,
                "sequences": 10} for lb, s, e, off in BUCKETS]
    data = {"run": run, "step": step, "seq_len": 8192, "bucket_size": 2048, "tokens": 1,
            "flops_exact": flops_exact, "flops_6nd": flops_6nd,
            "overall": {"loss": loss + 0.1, "tokens": 4000}, "buckets": buckets,
            "trailing": {"label": "trailing", "last": 2048, "loss": loss - 0.01, "tokens": 900,
                         "sequences": 8}}
    (run_dir / "eval").mkdir(exist_ok=True)
    (run_dir / "eval" / f"step_{step:08d}.json").write_text(json.dumps(data))


def _image_links(md: str) -> list[str]:
    return re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)


def _check_rendering(out_dir):
    """Both files exist; every linked figure is a real PNG; the HTML embeds each of them."""
    md = (out_dir / "report.md").read_text()
    page = (out_dir / "report.html").read_text()
    links = _image_links(md)
    assert links, "the report shows no figure"
    for rel in links:
        png = out_dir / rel
        assert png.is_file() and png.stat().st_size > 10_000, f"{png} missing or near-empty"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.with_suffix(".pdf").is_file()
    srcs = re.findall(r'src="([^"]*)"', page)
    assert len(srcs) == len(links) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert all(len(s) > 10_000 for s in srcs)
    assert "<link" not in page and "<script" not in page  # self-contained
    return md, page


# ------------------------------------------------------------------ the tiny sweep


@pytest.fixture(scope="module")
def tiny_report(tiny_sweep_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_report")
    # The command (experiments.report runs the same CLI, tested by the error cases).
    proc = run_cli("analysis.report", f"--workdir={tiny_sweep_dir}", f"--out={out}", "--bootstrap=50",
                   check=True)
    return out, proc


def test_tiny_sweep_report_sections_and_figures(tiny_report, tiny_sweep_dir):
    out, proc = tiny_report
    md, page = _check_rendering(out)
    for heading in ("## Summary", "## Runs", "## Loss vs compute", "### Fitted laws",
                    "## Compute-efficiency multiplier", "## Position-wise laws",
                    "## Parametric law (Chinchilla approach 3)", "## Notes"):
        assert heading in md, heading
    sweep = results.load_sweep(tiny_sweep_dir)
    for run in sweep.runs:
        assert f"| {run.run} | {run.arm} | {run.size} |" in md
        assert run.run in page
    assert f"Finished runs used: **{len(sweep.runs)}**" in md
    totals = report.total_compute(sweep)
    for conv, name in (("exact", "exact"), ("6nd", "6ND")):
        assert f"{totals[conv]:.4g} PFLOP/s-days ({name})" in md
    # The papers' pair by default: MoBA vs full drawn as MoBA's Figure 3 (the section's
    # loss-vs-compute figure, the sweep holding just those arms), no Kimi chart.
    assert {l.split("/")[-1] for l in _image_links(md)} == {"loss_vs_compute.png"}
    assert "### MoBA vs Full Attention (MoBA (Lu et al. 2025), Figure 3)" in md
    base = report.default_baseline(sweep.arms)
    for arm in sweep.arms:
        if arm != base:
            assert f"| {arm} vs {base} |" in md
        # Too few runs per arm: the Chinchilla fit is skipped with the reason, not attempted.
        n = len(sweep.by_arm(arm))
        assert n >= report.MIN_CHINCHILLA_RUNS or f"{arm}: skipped, {n} run(s)" in md
    assert "No position-wise evaluations found" in md
    # Progress on stderr; the two output paths on stdout.
    assert "bootstrap" in proc.stderr
    assert str(out / "report.md") in proc.stdout and str(out / "report.html") in proc.stdout


def test_tiny_sweep_6nd_axes_and_laws(tiny_report, tiny_sweep_dir, tmp_path, monkeypatch):
    axes = _recording_axes(monkeypatch)
    report.write_report(tiny_sweep_dir, out=tmp_path / "r", convention="6nd", bootstrap=0,
                        echo=lambda s: None)
    assert axes and all(x == "PFLOP/s-days (6ND)" and y == "validation loss (nats per byte)"
                        for x, y in axes), axes
    section = lambda md: md.split("### Fitted laws")[1].split("## Position")[0]  # noqa: E731
    exact, nd = (section((d / "report.md").read_text()) for d in (tiny_report[0], tmp_path / "r"))
    assert exact != nd and "| full | 6ND |" in nd and "| full | exact |" in nd


def test_tiny_sweep_multiplier_is_honest(tiny_report, tiny_sweep_dir):
    md = (tiny_report[0] / "report.md").read_text()
    sweep = results.load_sweep(tiny_sweep_dir)
    fewest = min(len(sweep.by_arm(a)) for a in sweep.arms)
    rows = [l for l in md.splitlines() if re.match(r"\| [a-z0-9_]+ vs [a-z0-9_]+ \|", l)]
    # Default: 4 geometric budgets over the sweep's compute per compared arm (plus the
    # final-point table when every arm has 3+ runs).
    assert len(rows) >= 4 * (len(sweep.arms) - 1)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        reading = cells[4]
        if cells[3] == "–":
            # No interval: the envelope bootstrap had too few fittable resamples
            # (fits.fit_envelope keeps the point fit); no difference may be claimed.
            assert "no difference claimed" in reading, reading
            continue
        lo, hi = map(float, cells[3].strip("[]").split(","))
        assert lo <= float(cells[2].rstrip("x")) <= hi
        if fewest < 3:  # whatever the interval, no difference may be claimed
            assert reading.startswith("no difference claimed: an arm has"), reading
        else:
            assert ("no difference resolved" in reading) == (lo <= 1.0 <= hi), reading


def test_tiny_sweep_reports_standard_errors_and_both_conventions(tiny_report, tiny_sweep_dir):
    """The real tiny sweep logged val_loss_se: the runs table shows each final point's,
    the multiplier section weighs the arms' difference against it and against the
    envelope's noise shift, and the multipliers come in both FLOP conventions."""
    md = (tiny_report[0] / "report.md").read_text()
    sweep = results.load_sweep(tiny_sweep_dir)
    assert all(r.final_se is not None and r.final_se > 0 for r in sweep.runs)
    assert "| final val SE |" in md
    for r in sweep.runs:
        assert re.search(rf"^\| {r.run} \|.*\| {r.final_loss:.4f} \| {r.final_se:.2g} \|$", md, re.M)
    mult = md.split("## Compute-efficiency multiplier")[1].split("## Position")[0]
    assert "The same multipliers on the **6ND** axis" in mult
    noise = mult.split("### Validation noise and the envelope")[1]
    assert "The final points' median SE is **" in noise and "minimum over noisy points sits low" in noise
    assert re.search(r"^- moba vs full: median \|ΔL\| \S+ = [0-9.]+x the median SE; noise floor", noise, re.M)
    assert "compared difference(s) exceed their noise floor" in noise


# ------------------------------------------------------------ synthetic sweeps


def test_position_wise_and_chinchilla_sections(tmp_path):
    styles = {"full": {"arm_display": "Full Attention", "arm_colour": "Blues"},
              "moba": {"arm_display": "MoBA", "arm_colour": "Reds"}}
    root = write_sweep(tmp_path / "sweep", {"full": 6, "moba": 4}, {"moba": 0.99}, evals=True,
                       styles=styles)
    res = report.write_report(root, out=tmp_path / "out", bootstrap=20, echo=lambda s: None)
    md, _ = _check_rendering(tmp_path / "out")
    names = {p.name for p in res.figures}
    assert names == {"loss_vs_compute.png", "position_wise.png"}
    for label, *_ in BUCKETS:
        assert f"| {label} | full |" in md and f"| {label} | moba |" in md
    assert "| trailing | moba |" in md
    assert "Latest evaluation of 10 run(s)" in md
    assert "### MoBA vs Full Attention (MoBA" in md   # names from results.jsonl
    assert "| 0k-2k | full | 6ND |" in md and "| trailing | moba | exact |" in md  # both axes
    # Chinchilla: 6 runs of full are fitted; moba's 4 are not, and the report says why.
    chin = md.split("## Parametric law")[1].split("## Notes")[0]
    assert re.search(r"^\| full \| [0-9.]+", chin, re.M)
    assert "Exclusion rule: none, every finished run is fitted (the report's default" in chin
    assert re.search(r"^\| full \|.*\| 6 \| none \|", chin, re.M)  # the rule each fit used
    assert "moba: skipped, 4 run(s)" in chin
    assert "offset law" in md.lower()


def test_position_loader_uses_latest_step(tmp_path):
    root = write_sweep(tmp_path / "sweep", {"full": 3, "moba": 3}, evals=True)
    # One bucket without tokens (null loss) in one run's latest file: left out of that run.
    path = root / "moba_s0" / "eval" / "step_00000100.json"
    data = json.loads(path.read_text())
    data["buckets"][3].update(loss=None, tokens=0)
    path.write_text(json.dumps(data))
    sweep = results.load_sweep(root)
    pos = position.load_position_evals(sweep, "6nd")
    assert list(pos.bucket_data) == [b[0] for b in BUCKETS] + ["trailing"]
    assert set(pos.steps.values()) == {100}
    C, L = pos.bucket_data["0k-2k"]["full"]
    finals = {r.run: r.final_loss for r in sweep.by_arm("full")}
    np.testing.assert_allclose(np.sort(L), np.sort([v + 0.30 for v in finals.values()]))
    np.testing.assert_allclose(np.sort(C), np.sort([r.final_compute("6nd") for r in sweep.by_arm("full")]))
    assert len(pos.bucket_data["6k-8k"]["moba"][0]) == 2
    kept, dropped = position.fittable(pos.bucket_data)
    assert "moba" not in kept["6k-8k"] and any(d.startswith("6k-8k/moba") for d in dropped)


def test_position_loader_skips_bad_file_with_warning(tmp_path):
    root = write_sweep(tmp_path / "sweep", {"full": 3}, evals=True)
    (root / "full_s1" / "eval" / "step_00000200.json").write_text("{not json")
    with pytest.warns(AnalysisWarning, match="full_s1"):
        pos = position.load_position_evals(results.load_sweep(root))
    assert "full_s1" in pos.skipped and len(pos.bucket_data["0k-2k"]["full"][0]) == 2
    bad = root / "full_s1" / "eval" / "step_00000200.json"
    assert (f"{bad} is not valid JSON at line 1 column 2 (Expecting property name enclosed in "
            "double quotes); fix it, or delete it") in pos.skipped["full_s1"], pos.skipped


def test_single_arm_report_has_no_multiplier(tmp_path):
    root = write_sweep(tmp_path / "sweep", {"moba": 3})
    report.write_report(root, out=tmp_path / "out", bootstrap=0, echo=lambda s: None)
    md, _ = _check_rendering(tmp_path / "out")
    assert "one arm (moba): no multiplier" in md
    assert "no bootstrap, so no intervals" in md


def test_explicit_pair_and_budgets(tmp_path):
    root = write_sweep(tmp_path / "sweep", {"mla": 3, "kda": 3, "moba": 3})
    report.write_report(root, out=tmp_path / "out", improved="kda", budgets=[1e-6, 3e-6],
                        bootstrap=10, echo=lambda s: None)
    md = (tmp_path / "out" / "report.md").read_text()
    rows = [l for l in md.splitlines() if l.startswith("| kda vs mla |")]
    assert [r.split("|")[2].strip() for r in rows[:2]] == ["1e-06", "3e-06"]
    assert "moba vs mla" not in md  # only the requested pair; mla is the default baseline
    assert "Kimi-Linear-style chart, kda vs mla:" in md  # no arm_display: the arms' own names


def test_noise_paragraph_resolves_or_not_and_old_runs_without_se(tmp_path):
    """Logged standard errors far below the arms' 2% difference: resolved; far above it:
    within the noise; a sweep of runs without val_loss_se says the noise is unknown."""
    readings = {}
    for name, se in (("small", 0.001), ("large", 0.2)):
        root = write_sweep(tmp_path / name, {"full": 4, "moba": 4}, {"moba": 0.98},
                           se={"full": se, "moba": se})
        report.write_report(root, out=tmp_path / f"{name}_out", bootstrap=0, echo=lambda s: None)
        md = (tmp_path / f"{name}_out" / "report.md").read_text()
        assert f"The final points' median SE is **{se:.3g}**" in md
        assert re.search(r"^\| full \| 4 of 4 \| [0-9.e-]+ \| -?[0-9.e-]+ \|$", md, re.M)
        readings[name] = [l for l in md.splitlines() if l.startswith("- moba vs full: median |ΔL|")]
        assert len(readings[name]) == 1
    assert "larger than the noise" in readings["small"][0]
    assert "within the noise floor" in readings["large"][0]

    root = write_sweep(tmp_path / "old", {"full": 3, "moba": 3}, {"moba": 0.98})
    assert all(r.val_loss_se is None and r.final_se is None for r in results.load_sweep(root).runs)
    report.write_report(root, out=tmp_path / "old_out", bootstrap=0, echo=lambda s: None)
    md, _ = _check_rendering(tmp_path / "old_out")
    assert "No run logged the standard error of its validation loss" in md
    assert re.search(r"^\| full_s0 \|.*\| – \|$", md, re.M)    # a dash in the SE column


FOUR_ARMS = {"full": {"arm_display": "Full Attention", "arm_colour": "Blues"},
             "moba": {"arm_display": "MoBA", "arm_colour": "Reds"},
             "mla": {"arm_display": "MLA", "arm_colour": "Blues"},
             "kimi_linear": {"arm_display": "Kimi Linear", "arm_colour": "Reds"}}


def _recording_axes(monkeypatch) -> list[tuple[str, str]]:
    """Records (x label, y label) of every axis of every figure the report saves."""
    seen, save = [], plots._save

    def record(fig, path):
        seen.extend((ax.get_xlabel(), ax.get_ylabel()) for ax in fig.axes if ax.get_visible())
        return save(fig, path)
    monkeypatch.setattr(plots, "_save", record)
    return seen


def test_papers_pairs_by_default_and_convention_switch(tmp_path, monkeypatch):
    """Four arms, no flags: MoBA vs full drawn MoBA's way, Kimi Linear vs MLA Kimi's way;
    --convention=6nd changes every figure's axis and every law, and both conventions'
    laws are in the tables either way."""
    root = write_sweep(tmp_path / "sweep", {a: 3 for a in FOUR_ARMS},
                       {"moba": 0.99, "mla": 0.995, "kimi_linear": 0.985}, styles=FOUR_ARMS)
    mds = {}
    for conv in ("exact", "6nd"):
        out = tmp_path / conv
        axes = _recording_axes(monkeypatch)
        report.write_report(root, out=out, bootstrap=0, convention=conv, echo=lambda s: None)
        md, _ = _check_rendering(out)
        mds[conv] = md
        names = {l.split("/")[-1] for l in _image_links(md)}
        assert names == {"loss_vs_compute.png", "loss_vs_compute_moba_vs_full.png",
                         "kimi_style_kimi_linear_vs_mla.png", "kimi_style_mla_vs_full.png"}
        assert "### MoBA vs Full Attention (MoBA (Lu et al. 2025), Figure 3)" in md
        assert "Kimi-Linear-style chart, Kimi Linear vs MLA:" in md
        assert "kimi_linear vs full" not in md and "moba vs mla" not in md
        for pair in ("moba vs full", "mla vs full", "kimi_linear vs mla"):
            assert f"| {pair} |" in md
        laws = [l for l in md.splitlines() if re.match(r"\| [a-z_]+ \| (exact|6ND) \| ", l)]
        assert {l.split("|")[2].strip() for l in laws} == {"exact", "6ND"}   # both conventions
        name = {"exact": "exact FLOPs", "6nd": "6ND"}[conv]
        assert len(axes) == len(names)
        assert all(x == f"PFLOP/s-days ({name})" and y == "validation loss (nats per byte)"
                   for x, y in axes), axes
    # Every law on the chosen axis changes with the convention (the table lists the chosen first).
    first = lambda md: md.split("### Fitted laws")[1].split("### Offset")[0]  # noqa: E731
    assert first(mds["exact"]) != first(mds["6nd"])
    mult = lambda md: [l for l in md.splitlines() if re.match(r"\| [a-z_]+ vs [a-z_]+ \|", l)]  # noqa: E731
    assert mult(mds["exact"]) != mult(mds["6nd"])


@pytest.mark.parametrize("ratio,lo,hi,expect", [
    (1.10, 0.95, 1.30, "no difference resolved"),
    (1.20, 1.05, 1.40, "MoBA needs less compute"),
    (0.80, 0.70, 0.90, "MoBA needs more compute"),
    (1.20, None, None, "no interval"),
])
def test_multiplier_verdict(ratio, lo, hi, expect):
    labels = {"moba": "MoBA"}  # the sweep's arm_display
    assert expect in report.multiplier_verdict(ratio, lo, hi, "moba", labels=labels)
    assert expect in report.multiplier_verdict(ratio, lo, hi, "moba", min_runs=3, labels=labels)
    if lo is not None:
        assert "no difference claimed" in report.multiplier_verdict(ratio, lo, hi, "moba", min_runs=2,
                                                                    labels=labels)


# ------------------------------------------------------------------------ errors


def _one_line_error(proc, needle):
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], proc.stderr[-2000:]


def test_cli_not_a_sweep_directory(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    proc = run_cli("experiments.report", f"--workdir={tmp_path}")
    _one_line_error(proc, "not a sweep directory")
    assert not (tmp_path / "report").exists()


def test_cli_arms_without_loss_overlap(tmp_path):
    root = write_sweep(tmp_path / "sweep", {"full": 3, "moba": 3}, {"moba": 0.3})
    proc = run_cli("experiments.report", f"--workdir={root}", "--bootstrap=0")
    _one_line_error(proc, "share no loss level")


def test_cli_malformed_results_line_is_named_completely(tmp_path):
    """A raw tab inside a string of results.jsonl: the message names the file, line and
    column and what to do (json's own text stops at "Invalid control character at")."""
    root = write_sweep(tmp_path / "sweep", {"full": 3})
    lines = (root / "results.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"full_s1"', '"full\ts1"')
    (root / "results.jsonl").write_text("\n".join(lines) + "\n")
    proc = run_cli("experiments.report", f"--workdir={root}", "--bootstrap=0")
    col = lines[1].index("\t") + 1
    _one_line_error(proc, f"error: {root / 'results.jsonl'} is not valid JSON at line 2 column "
                          f"{col} (Invalid control character); fix or delete that line")


def test_no_finished_runs(tmp_path):
    root = write_sweep(tmp_path / "sweep", {"full": 3})
    recs = [json.loads(l) for l in (root / "results.jsonl").read_text().splitlines()]
    (root / "results.jsonl").write_text("".join(json.dumps({**r, "status": "running"}) + "\n" for r in recs))
    with pytest.raises(AnalysisError, match="no finished runs"):
        report.write_report(root, echo=lambda s: None)


@pytest.mark.parametrize("kwargs,match", [
    (dict(baseline="nope"), "not in the sweep"),
    (dict(improved="full"), "also the baseline"),
    (dict(budgets=[-1.0]), "must be positive"),
    (dict(convention="flops"), "unknown FLOP convention"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    root = write_sweep(tmp_path / "sweep", {"full": 3, "moba": 3})
    with pytest.raises(AnalysisError, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore", AnalysisWarning)
        report.write_report(root, out=tmp_path / "out", bootstrap=0, echo=lambda s: None, **kwargs)
    assert not (tmp_path / "out" / "report.md").exists()
