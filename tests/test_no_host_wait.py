"""The trainer never waits on the host between log steps (issue #16, item 3).

With ``train.forbid_host_sync_between_logs=True`` the steps between log, evaluation
and checkpoint steps run under :func:`moba_jax.train.loop._no_host_reads`: JAX's
device-to-host transfer guard (live on GPU and TPU) plus a trap on ``jax.Array``'s own
host reads (live on every backend; the transfer guard never fires on CPU, where a
device buffer is host memory). A tiny run passes under it with prefetch on and
asynchronous checkpoints; the guard itself is shown to fire, in and outside the loop;
and a NaN still stops the run with the last good checkpoint kept.

In-process, tiny runs: each test takes a few seconds on 2 CPU cores.
"""
import contextlib
import os
import re
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import lm
from moba_jax.budget import eval_steps
from moba_jax.train import loop, step as stp
from moba_jax.train.checkpointing import Checkpointer
from tests.helpers import read_jsonl


def logged_steps(c, upto):
    """The steps a run of ``c`` logs (every ``log_every``-th and its evaluations)."""
    evals = set(eval_steps(c.train.steps, c.eval.points))
    return [s for s in range(1, upto + 1) if s % c.train.log_every == 0 or s in evals]


def tiny(**train):
    c = lm.get_config("tiny")
    c.train.update({**dict(progress=False, steps=20, log_every=5, checkpoint_every=10,
                            forbid_host_sync_between_logs=True, prefetch=2,
                            async_checkpoints=True), **train})
    c.eval.update(points=2, batches=1)
    return c


@pytest.fixture
def guarded_steps(monkeypatch):
    """Counts the steps that ran under the guard."""
    count = [0]
    real = loop._no_host_reads

    @contextlib.contextmanager
    def counting():
        count[0] += 1
        with real():
            yield
    monkeypatch.setattr(loop, "_no_host_reads", counting)
    return count


def test_tiny_run_reads_nothing_on_the_host_between_log_steps(tmp_path, guarded_steps):
    c = tiny()
    result = loop.train(c, str(tmp_path))
    assert guarded_steps[0] == c.train.steps, "every step dispatches under the guard"
    logged = [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")]
    assert logged == logged_steps(c, 20) and len(logged) <= 6
    assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints")) == [10, 20]
    assert np.isfinite(result.final_val_loss)
    # The trap is gone afterwards: host reads work again.
    assert float(jnp.ones(()) * 2) == 2.0


def _device_value():
    return jax.jit(lambda: jnp.arange(3.0) + 1)()


READS = {"float": lambda y: float(y[0]), "int": lambda y: int(y[1]),
         "bool": lambda y: bool(y[0] > 0), "format": lambda y: f"{y[0]:.3f}",
         "str": str, "tolist": lambda y: y.tolist(), "device_get": jax.device_get}


@pytest.mark.parametrize("read", sorted(READS))
def test_the_guard_fires_on_a_host_read(read):
    """Each way the loop reads a device value raises under the guard, on this backend;
    outside it, and in other threads (orbax's background save), reads work."""
    y = _device_value()
    with loop._host_reads_trapped():
        with loop._no_host_reads():
            with pytest.raises(loop.HostSyncError, match="between log steps"):
                READS[read](y)
            other = []
            t = threading.Thread(target=lambda: other.append(READS[read](y)))
            t.start()
            t.join()
            assert other, "another thread may read"
        READS[read](y)
    READS[read](y)


def test_the_transfer_guard_fires_where_it_can():
    """JAX's transfer guard catches even numpy's own reads, but only where device memory
    is not host memory: on CPU it never fires (hence the trap above)."""
    y = _device_value()
    with loop._no_host_reads():
        if jax.default_backend() == "cpu":
            np.asarray(y)
        else:
            with pytest.raises(Exception, match="Disallowed device-to-host transfer"):
                np.asarray(y)


def test_a_host_read_in_the_loop_between_log_steps_is_refused(tmp_path, monkeypatch):
    """The guard is live around the loop's own steps: a NaN check that reads the loss on
    the host at every step (what the loop must not do) stops the run."""
    real = loop._first_non_finite

    def eager(seen, loss, step):
        float(loss)
        return real(seen, loss, step)
    monkeypatch.setattr(loop, "_first_non_finite", eager)
    with pytest.raises(loop.HostSyncError, match="forbid_host_sync_between_logs"):
        loop.train(tiny(steps=6), str(tmp_path))


def test_nan_stops_the_run_and_keeps_the_last_good_async_checkpoint(tmp_path, monkeypatch):
    """From step 13 on the parameters and the loss are NaN (poisoned on the device). The
    step-10 checkpoint was written in the background while steps 11-15 ran; the run stops
    at the step-15 checkpoint (not saved), names step 13, and step 10 is kept, whole."""
    real = stp.jit_train_step

    def poisoned(*args, **kwargs):
        step_fn = real(*args, **kwargs)

        @jax.jit
        def poison(state, m):
            nan = lambda x: jnp.where(state["step"] > 12, jnp.nan, x)
            return {**state, "params": jax.tree.map(nan, state["params"])}, \
                {**m, "train_loss": nan(m["train_loss"])}
        return lambda state, batch: poison(*step_fn(state, batch))
    monkeypatch.setattr(stp, "jit_train_step", poisoned)
    c = tiny(log_every=4, checkpoint_every=5)
    with pytest.raises(loop.TrainingDivergedError) as e:
        loop.train(c, str(tmp_path))
    assert re.match(r"training diverged at step 13: train loss is nan; the last good "
                    r"checkpoint \(step 10\) is kept", str(e.value)), str(e.value)
    ckpts = tmp_path / "checkpoints"
    assert sorted(os.listdir(ckpts)) == ["10", "5"], "only whole, finite checkpoints"
    restored = Checkpointer(str(ckpts)).restore(10, None)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored[0]["params"]))
    assert restored[1] and restored[2]["step"] == 10
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == logged_steps(c, 12)
