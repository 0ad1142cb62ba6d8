"""Sweep loading and the three figures, on a small synthetic sweep written in the runner's format.

Run: ``pytest tests/test_plots.py`` (a few seconds, CPU only).
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from analysis import fits, plots, results
from analysis.results import AnalysisError, AnalysisWarning

PFD = 8.64e19  # FLOPs per PFLOP/s-day

# Synthetic ground truth: a Chinchilla-like surface; MoBA slightly worse per 6ND FLOP but
# cheaper in exact FLOPs (it skips attention pairs).
_SIZES = {"s1": 12e6, "s2": 25e6, "s3": 50e6, "s4": 100e6, "s5": 200e6}
_ARMS = {"full": dict(offset=0.0, exact_overhead=1.45), "moba": dict(offset=0.01, exact_overhead=1.25)}
# What the sweep writes into results.jsonl for each arm (from the attention-kind registry).
_STYLE = {"full": {"arm_display": "Full Attention", "arm_colour": "Blues"},
          "moba": {"arm_display": "MoBA", "arm_colour": "Reds"}}


def _loss(n, d, offset):
    return 1.9 + 480.0 / n ** 0.35 + 2000.0 / d ** 0.37 + offset


def write_synthetic_sweep(root, n_evals: int = 40, seed: int = 0, extra_records=()):
    """Write ``root/results.jsonl`` and ``root/<run>/metrics.jsonl`` for 2 arms x 5 sizes."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for arm, spec in _ARMS.items():
        for size, n in _SIZES.items():
            run = f"{arm}_{size}"
            total = int(20 * n)
            f6 = 6 * n
            fex = f6 * spec["exact_overhead"]
            (root / run).mkdir(exist_ok=True)
            lines = []
            steps = 200
            for step in range(1, steps + 1):
                tok = total * step / steps
                m = {"step": step, "tokens": tok, "flops_exact": fex * tok, "flops_6nd": f6 * tok,
                     "train_loss": _loss(n, tok, spec["offset"]) + 0.02, "lr": 1e-3, "grad_norm": 1.0,
                     "tokens_per_s": 1e5, "mfu": 0.4}
                if step % (steps // n_evals) == 0:
                    m["val_loss"] = _loss(n, tok, spec["offset"]) * (1 + 0.002 * rng.standard_normal())
                lines.append(json.dumps(m))
            (root / run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            records.append({"run": run, "arm": arm, "size": size, "n_params_nonembed": int(n),
                            "n_params": int(n + 8e6), "tokens": total, "budget_flops": fex * total,
                            "convention": "exact", "final_val_loss": _loss(n, total, spec["offset"]),
                            "flops_per_token_exact": fex, "flops_per_token_6nd": f6, "status": "done",
                            **_STYLE[arm]})
    records += list(extra_records)
    (root / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    return write_synthetic_sweep(tmp_path_factory.mktemp("sweep"))


def _non_trivial(paths):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 10_000, f"{p} missing or near-empty"


# ------------------------------------------------------------------------- loading


def test_load_sweep_reads_curves(sweep_dir):
    sweep = results.load_sweep(sweep_dir)
    assert sweep.arms == ["full", "moba"]
    runs = sweep.by_arm("moba")
    assert [r.size for r in runs] == list(_SIZES)  # smallest first
    r = runs[0]
    assert len(r.val_loss) == 40 and np.all(np.diff(r.flops_in("exact")) > 0)
    np.testing.assert_allclose(r.compute("6nd")[-1], 6 * 12e6 * 20 * 12e6 / PFD)
    np.testing.assert_allclose(r.compute("exact") / r.compute("6nd"), 1.25)


def test_load_sweep_skips_bad_runs_with_warning(tmp_path):
    bad = [{"run": "full_nan", "arm": "full", "size": "s9", "final_val_loss": float("nan"), "status": "done"},
           {"run": "full_nometrics", "arm": "full", "size": "s9", "final_val_loss": 3.0, "status": "done"},
           {"run": "still_training", "arm": "full", "size": "s9", "status": "running"}]
    write_synthetic_sweep(tmp_path / "s", n_evals=10, extra_records=bad)
    with pytest.warns(AnalysisWarning, match=r"skipped 2 run\(s\): full_nan .*full_nometrics"):
        sweep = results.load_sweep(tmp_path / "s")
    assert len(sweep.runs) == 10 and set(sweep.skipped) == {"full_nan", "full_nometrics"}


def test_load_sweep_keeps_last_record_of_relogged_steps(tmp_path):
    root = write_synthetic_sweep(tmp_path / "s", n_evals=10)
    path = root / "moba_s1" / "metrics.jsonl"
    lines = path.read_text().splitlines()
    resumed = [json.loads(l) for l in lines[-50:]]
    for m in resumed:  # the resumed run logs the last 50 steps again, with other losses
        if "val_loss" in m:
            m["val_loss"] += 1.0
    path.write_text("\n".join(lines + [json.dumps(m) for m in resumed]) + "\n")
    run = results.load_sweep(root).by_arm("moba")[0]
    assert len(run.val_loss) == 10 and np.all(np.diff(run.compute()) > 0)
    assert run.val_loss[-1] == pytest.approx(resumed[-1]["val_loss"])


def test_load_sweep_errors(tmp_path):
    with pytest.raises(AnalysisError, match="not a sweep directory"):
        results.load_sweep(tmp_path)
    (tmp_path / "results.jsonl").write_text(json.dumps({"run": "x", "status": "running"}) + "\n")
    with pytest.raises(AnalysisError, match="no finished runs"):
        results.load_sweep(tmp_path)
    (tmp_path / "results.jsonl").write_text(
        json.dumps({"run": "x", "arm": "full", "size": "s", "final_val_loss": None, "status": "done"}) + "\n")
    with pytest.raises(AnalysisError, match="none of the 1 finished run"), pytest.warns(AnalysisWarning):
        results.load_sweep(tmp_path)


def test_curves_from_csv(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text("arm,run,compute_pflops_days,val_loss\n"
                 "moba,m1,0.2,3.0\nmoba,m1,0.1,3.2\nfull,f1,0.1,3.1\nfull,f2,0.1,nan\n")
    with pytest.warns(AnalysisWarning, match="f2"):
        sweep = results.curves_from_csv(p, convention="6nd")
    (m1,) = sweep.by_arm("moba")
    np.testing.assert_allclose(m1.compute("6nd"), [0.1, 0.2])
    np.testing.assert_allclose(m1.val_loss, [3.2, 3.0])
    with pytest.raises(AnalysisError, match="no 'exact' FLOPs"):
        m1.compute("exact")
    (tmp_path / "bad.csv").write_text("arm,run,loss\n")
    with pytest.raises(AnalysisError, match="lacks column"):
        results.curves_from_csv(tmp_path / "bad.csv")


def test_arm_display_and_colour_from_results(tmp_path):
    root = write_synthetic_sweep(tmp_path / "s", n_evals=10)
    sweep = results.load_sweep(root)
    assert sweep.arm_display == {"full": "Full Attention", "moba": "MoBA"}
    assert sweep.display_name("moba") == "MoBA" and sweep.colour_family("moba") == "Reds"
    assert sweep.labels == {"full": "Full Attention", "moba": "MoBA"}
    # Rows without the fields (an old sweep): the arm's own name, automatic distinct colours.
    index = root / "results.jsonl"
    rows = [json.loads(l) for l in index.read_text().splitlines()]
    bare = [{k: v for k, v in r.items() if not k.startswith("arm_")} for r in rows]
    index.write_text("".join(json.dumps(r) + "\n" for r in bare))
    old = results.load_sweep(root)
    assert old.display_name("moba") == "moba" and old.arm_colour == {}
    assert old.colour_families == {"full": "Blues", "moba": "Reds"}
    assert "full: L = " in plots.plot_loss_vs_compute(old, tmp_path / "old").summary()
    # Two arms declaring one family: the second gets the next free one; runs of an arm that
    # disagree keep the first value, with a warning.
    rows = [{**r, "arm_colour": "Blues"} for r in rows]
    rows[-1]["arm_display"] = "MoBA v2"
    index.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.warns(AnalysisWarning, match="moba arm_display 'MoBA' vs 'MoBA v2'"):
        clash = results.load_sweep(root)
    assert clash.display_name("moba") == "MoBA"
    assert clash.colour_families == {"full": "Blues", "moba": "Reds"}
    # Mappings take labels/colours; an unknown colormap falls back with a warning.
    laws = {"a": fits.PowerLawFit.from_params(3.0, -0.05), "b": fits.PowerLawFit.from_params(2.9, -0.05)}
    with pytest.warns(AnalysisWarning, match="'NoSuchMap' is not a matplotlib colormap"):
        res = plots.plot_kimi_style(laws, tmp_path / "k", labels={"b": "Bee"}, colours={"b": "NoSuchMap"},
                                    C_range=(1.0, 10.0))
    assert "Bee over a" in res.summary()


# ------------------------------------------------------------------------- figures


@pytest.mark.parametrize("convention", ["exact", "6nd"])
def test_plot_loss_vs_compute(sweep_dir, tmp_path, convention):
    sweep = results.load_sweep(sweep_dir)
    res = plots.plot_loss_vs_compute(sweep, tmp_path / "loss_vs_compute.png", convention=convention, bootstrap=20)
    _non_trivial(res.paths)
    assert set(res.fits) == {"full", "moba"}
    for arm, law in res.fits.items():
        assert 2.0 < law.a < 5.0 and -0.3 < law.b < -0.01, (arm, law)
        assert law.b_ci[0] <= law.b <= law.b_ci[1]
        env = res.envelopes[arm]
        assert np.all(np.diff(env.C) > 0) and np.all(np.diff(env.L) < 0)
    assert "Full Attention: L = " in res.summary()


def test_plot_loss_vs_compute_draws_arm_without_enough_points(tmp_path):
    root = write_synthetic_sweep(tmp_path / "s", n_evals=10)
    sweep = results.load_sweep(root)
    short = dataclasses.replace(sweep.by_arm("moba")[0], arm="tiny", val_loss=np.array([4.0, 3.9]),
                                flops={"exact": np.array([1e15, 2e15]), "6nd": np.array([1e15, 2e15])})
    sweep = dataclasses.replace(sweep, runs=sweep.runs + (short,))
    with pytest.warns(AnalysisWarning) as record:
        res = plots.plot_loss_vs_compute(sweep, tmp_path / "fig")
    assert any("tiny: no projection drawn" in str(w.message) for w in record)
    assert set(res.fits) == {"full", "moba"}
    _non_trivial(res.paths)


def test_plot_kimi_style_from_sweep_and_from_laws(sweep_dir, tmp_path):
    sweep = results.load_sweep(sweep_dir)
    res = plots.plot_kimi_style(sweep, tmp_path / "kimi", baseline="moba", improved="full", bootstrap=50)
    _non_trivial(res.paths)
    assert res.multiplier_arms == ("moba", "full")
    assert all(np.isfinite(v[0]) and v[1] <= v[2] for v in res.multiplier.at.values())

    laws = {"mla": fits.PowerLawFit.from_params(2.3092, -0.0536),
            "kda": fits.PowerLawFit.from_params(2.2879, -0.0527)}
    res = plots.plot_kimi_style(laws, tmp_path / "kimi_published", convention="6nd",
                                budgets=(1.8, 5.0, 15.0), C_range=(1.0, 20.0))
    _non_trivial(res.paths)
    assert res.multiplier.at[5.0][0] == pytest.approx(1.16, abs=0.005)
    assert "1.160x at 5" in res.summary()


def test_plot_position_wise(tmp_path):
    C = np.geomspace(0.4, 5.4, 5)
    buckets = {f"{k}k-{k + 2}k": {"moba": (C, (3.0 - 0.1 * k) * C ** -0.078),
                                  "full": (C, (2.99 - 0.1 * k) * C ** -0.078)} for k in range(0, 8, 2)}
    buckets["trailing"] = {"moba": (C, 1.546 * C ** -0.108), "full": (C, 1.464 * C ** -0.097)}
    res = plots.plot_position_wise(buckets, tmp_path / "pos", convention="6nd")
    _non_trivial(res.paths)
    assert res.fits["trailing"]["moba"].b == pytest.approx(-0.108, rel=1e-9)
    assert res.fits["0k-2k"]["full"].a == pytest.approx(2.99, rel=1e-9)
    assert plots._bucket_ylabel("trailing") == "trailing loss (nats per byte)"
    assert plots._bucket_ylabel("0k-2k") == "loss 0k-2k (nats per byte)"
    # Two runs are drawn as points without a law, with a warning naming bucket and arm.
    with pytest.warns(AnalysisWarning, match="bucket 'x', arm 'moba'.*points drawn without a law"):
        few = plots.plot_position_wise({"x": {"moba": ([1.0, 2.0], [3.0, 2.9])}}, tmp_path / "few")
    assert few.fits["x"] == {} and few.paths[0].exists()
    # Enough points that still cannot be fitted is an error naming bucket and arm.
    with pytest.raises(AnalysisError, match="bucket 'x', arm 'moba'"):
        plots.plot_position_wise({"x": {"moba": ([1.0, 2.0, 3.0], [3.0, float("nan"), 2.9])}},
                                 tmp_path / "bad")
