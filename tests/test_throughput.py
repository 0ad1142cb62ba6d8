"""``python -m experiments.throughput``: each run's step time, tokens/s and MFU."""
import json

import pytest

from tests.helpers import run_cli


def test_throughput_cli_times_every_arm(tmp_path):
    out = tmp_path / "tp.json"
    proc = run_cli("experiments.throughput", "--config=configs/scaling.py:tiny", "--sizes=t1",
                   "--steps=2", f"--out={out}", check=True)
    assert "full/t1" in proc.stdout and "moba/t1" in proc.stdout and "measured" in proc.stdout
    rows = json.load(open(out))
    assert set(rows) == {"full/t1", "moba/t1"}
    for r in rows.values():
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / (r["step_ms"] / 1e3))
        assert 0 < r["mfu"] < 1 and r["peak_flops_per_device"] > 0


def test_unknown_size_is_one_line(tmp_path):
    proc = run_cli("experiments.throughput", "--config=configs/scaling.py:tiny", "--sizes=zz")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: --sizes: zz not in the sweep's sizes (t1,t2); pick from those"]
