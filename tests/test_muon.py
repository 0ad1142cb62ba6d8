"""Muon (optax.contrib.muon) for the hidden matrices, AdamW for the rest; schedules."""
import json
import os
import shutil

import jax
import numpy as np
import optax
import pytest

from configs import lm
from moba_jax.train import optim
from moba_jax.train import state as st
from moba_jax.train.loop import train
from tests.helpers import read_jsonl


def _paths(tree):
    """Key paths of the array leaves of ``tree`` (masked leaves have none)."""
    return {jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _cfg(pattern="kda,mla", **train):
    c = lm.get_config("tiny")
    c.model.attention_pattern = pattern
    c.train.update(optimizer="muon", progress=False, **train)
    return c


def test_muon_gets_hidden_matrices_adamw_the_rest():
    c = _cfg()
    spec = st.model_spec(c.model, 0)
    tx, _ = optim.make_optimizer(c.train, 10, spec.param_shapes, spec.metadata)
    state = jax.eval_shape(tx.init, spec.param_shapes)
    inner = state[1].inner_states                     # chain(clip, partition)
    # optax's Muon is itself a partition (muon | adam) of which we feed only the first.
    muon = inner["muon"].inner_state.inner_states
    assert not _paths(muon["adam"].inner_state[0].mu)
    muon_mu = _paths(muon["muon"].inner_state[0].mu)
    adam_mu = _paths(inner["adamw"].inner_state[0].mu)
    params = _paths(spec.param_shapes)
    assert muon_mu | adam_mu == params and not muon_mu & adam_mu
    for p in params:
        hidden = p.endswith("['kernel']") and "conv_" not in p
        assert (p in muon_mu) == hidden, p
    assert "['embed']['embedding']" in adam_mu and "['blocks'][0]['attn']['A_log']" in adam_mu
    assert "['blocks'][1]['attn']['wq']['kernel']" in muon_mu


def test_untied_output_head_stays_with_adamw():
    c = _cfg(pattern="full")
    c.model.tie_embeddings = False
    spec = st.model_spec(c.model, 0)
    labels = optim.optimizer_labels(spec.param_shapes, spec.metadata)
    assert labels["head"]["kernel"] == "adamw" and labels["embed"]["embedding"] == "adamw"
    assert labels["blocks"][0]["mlp"]["up"]["kernel"] == "muon"


# kda,mla is slow (~1 min on the 2-core CPU, mostly compiling KDA for two runs): CI runs
# the same Muon training and resume path with full attention ([full]); which KDA
# parameters Muon takes is checked by test_muon_gets_hidden_matrices_adamw_the_rest.
@pytest.mark.parametrize("pattern", [pytest.param("kda,mla", marks=pytest.mark.slow), "full"])
def test_muon_trains_and_resumes_exactly(tmp_path, pattern):
    c = _cfg(pattern, steps=20, checkpoint_every=10, log_every=2)
    a, b = tmp_path / "a", tmp_path / "b"
    train(c, str(a))
    losses = [r["train_loss"] for r in read_jsonl(a / "metrics.jsonl")]
    assert np.mean(losses[-3:]) < losses[0] - 1.0      # a few Muon steps lower the loss
    # Resume from the step-10 checkpoint (Muon momentum restored) and match step for step.
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "20")
    os.remove(b / "result.json")
    train(c, str(b))
    after = lambda d: [(r["step"], r["train_loss"]) for r in read_jsonl(d / "metrics.jsonl")
                       if r["step"] > 10]
    assert [s for s, _ in after(b)] == [s for s, _ in after(a)]
    np.testing.assert_allclose([x for _, x in after(b)], [x for _, x in after(a)], rtol=1e-6)
    assert json.load(open(b / "result.json"))["final_val_loss"] == pytest.approx(
        json.load(open(a / "result.json"))["final_val_loss"], rel=1e-6)


@pytest.mark.parametrize("kind", ["cosine", "wsd"])
def test_schedules_span_the_run(kind):
    f = optim.lr_schedule(1.0, 100, 0.1, 0.1, kind, decay_frac=0.2)
    assert float(f(0)) == 0.0 and float(f(10)) == pytest.approx(1.0)
    assert float(f(100)) == pytest.approx(0.1)
    if kind == "wsd":   # held at the peak until the last 20 steps, then linear
        assert float(f(80)) == pytest.approx(1.0) and float(f(90)) == pytest.approx(0.55)
    assert isinstance(optim.make_optimizer(_cfg(schedule=kind).train, 100, {}, {})[0],
                      optax.GradientTransformation)
