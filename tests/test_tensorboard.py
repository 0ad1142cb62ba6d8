"""TensorBoard event files beside metrics.jsonl (``train.tensorboard=True``), read back."""
import os

import numpy as np
import pytest

from moba_jax.train import metrics as mx
from tests.helpers import read_jsonl, run_cli, tiny_overrides

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={event_accumulator.SCALARS: 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected_scalars(records) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as TensorBoard stores it: numeric fields, float32 values."""
    out = {}
    for r in records:
        for k, v in r.items():
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                out.setdefault(k, []).append((r["step"], float(np.float32(v))))
    return out


def test_tiny_run_writes_the_same_scalars_as_metrics_jsonl(tmp_path):
    run_cli("experiments.train", "--config=configs/lm.py:tiny", f"--workdir={tmp_path}",
            *tiny_overrides(**{"train.steps": 6, "train.log_every": 2, "train.tensorboard": "True"}),
            check=True)
    records = read_jsonl(os.path.join(tmp_path, "metrics.jsonl"))
    want = expected_scalars(records)
    assert {"train_loss", "val_loss", "lr", "grad_norm", "tokens"} <= set(want)
    assert len(want["train_loss"]) >= 3 and want["train_loss"][-1][0] == 6
    got = read_scalars(tmp_path / "tb")
    assert got == want     # same tags, steps and (float32) values


def test_flag_off_writes_no_events(tmp_path):
    w = mx.MetricsWriter(str(tmp_path / "metrics.jsonl"))
    w.write({"step": 1, "train_loss": 2.0})
    w.close()
    assert not (tmp_path / "tb").exists()


def test_resume_purges_events_after_the_checkpoint(tmp_path):
    """A resumed run re-logs the steps after its checkpoint; TensorBoard shows each once."""
    path, tb = str(tmp_path / "metrics.jsonl"), str(tmp_path / "tb")
    w = mx.MetricsWriter(path, tensorboard_dir=tb)
    for step in (1, 2, 3, 4):
        w.write({"step": step, "train_loss": 10.0 + step, "mfu": None})
    w.close()
    w = mx.MetricsWriter(path, tensorboard_dir=tb)
    w.truncate_after(2)
    for step in (3, 4, 5):
        w.write({"step": step, "train_loss": 20.0 + step, "mfu": None})
    w.close()
    got = read_scalars(tb)
    assert got == expected_scalars(mx.read_metrics(path))
    assert got["train_loss"] == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0), (5, 25.0)]
