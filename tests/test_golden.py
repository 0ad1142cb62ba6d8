"""Golden numbers: 3 training steps of each default arm must not drift.

Each default arm of ``configs/scaling.py`` (full, moba, mla, kimi_linear) is
trained for 3 steps from a fixed tiny float32 config, on one CPU device, and its
per-step train loss and gradient norm are compared with values stored below
(relative tolerance 1e-6).

The corpus is written by the test itself (:func:`write_corpus`: 200 documents of
code-like text from a fixed pure-Python generator), so the numbers do not depend on
the interpreter's standard library (the default corpus) and the test runs on every
Python. The stored values were recorded on 2026-12-04 with jax 0.11.2 on Python 3.12
on the 2-core CPU machine. A refactor must leave them unchanged. Update them only for
a change that is *meant* to alter the numbers (a new initialisation, a different data
order, a kernel whose rounding differs, a new jax), say so in the commit message, and
record them by running this file with
``MOBA_JAX_PRINT_GOLDEN=1 python -m pytest tests/test_golden.py -s``.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from configs import lm
from tests.helpers import read_jsonl

# Everything that sets the numbers is spelled out here, so that a change of a
# default elsewhere shows up as a failure rather than a silently new baseline.
MODEL = dict(d_model=32, n_layers=4, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=96,
             dtype="float32", tie_embeddings=True)
ARMS = {
    "full": dict(attention_pattern="full",
                 attention=dict(full=dict(implementation="xla", rope=True))),
    "moba": dict(attention_pattern="moba",
                 attention=dict(moba=dict(block_size=16, top_k=2, implementation="xla", rope=True))),
    "mla": dict(attention_pattern="mla",
                attention=dict(mla=dict(kv_latent_dim=16, rope_dim=8, q_latent_dim=0,
                                        implementation="xla", rope=True))),
    "kimi_linear": dict(attention_pattern="kda,kda,kda,mla",
                        attention=dict(kda=dict(chunk_size=32, conv_size=4, implementation="xla"),
                                       mla=dict(kv_latent_dim=16, rope_dim=8, q_latent_dim=0,
                                                implementation="xla", rope=False))),
}

# (train_loss, grad_norm) at steps 1, 2, 3.
GOLDEN = {
    "full": [[6.150739669799805, 7.323220252990723], [6.223163604736328, 7.716738700866699],
             [5.616057872772217, 5.350213527679443]],
    "moba": [[6.154053688049316, 7.1921539306640625], [6.239044189453125, 7.437465190887451],
             [5.59682035446167, 5.135924816131592]],
    "mla": [[5.72623348236084, 8.089920043945312], [5.558943748474121, 7.572213172912598],
            [5.029559135437012, 3.654766082763672]],
    "kimi_linear": [[5.850952625274658, 5.769548416137695], [5.770524978637695, 5.7629075050354],
                    [5.4450602531433105, 5.258033275604248]],
}


WORDS = ("def", "return", "self", "value", "index", "for", "in", "if", "else", "not",
         "None", "True", "import", "class", "yield", "with", "as", "lambda", "data", "count",
         "name", "items", "result", "key", "=", "+", "-", "*", "(", ")", ":", ",", "[", "]",
         "0", "1", "2", "10", "#", "'text'", "path", "open", "read", "write", "len", "range")


def write_corpus(folder, n_docs: int = 200) -> None:
    """``n_docs`` files of code-like lines drawn by a fixed 64-bit LCG: the same bytes on
    every machine and Python (no library random generator, whose streams may change)."""
    state = 20261204
    os.makedirs(folder, exist_ok=True)
    for d in range(n_docs):
        lines = []
        for _ in range(20 + d % 17):
            state = (state * 6364136223846793005 + 1442695040888963407) % 2 ** 64
            depth, n = (state >> 60) % 3, 2 + (state >> 40) % 9
            words = []
            for _ in range(n):
                state = (state * 6364136223846793005 + 1442695040888963407) % 2 ** 64
                words.append(WORDS[(state >> 33) % len(WORDS)])
            lines.append("    " * depth + " ".join(words))
        with open(os.path.join(folder, f"doc{d:03d}.py"), "w") as f:
            f.write("\n".join(lines) + "\n")


def golden_config(arm: str, corpus: str):
    c = lm.get_config("tiny")
    c.model.update(MODEL)
    overrides = ARMS[arm]
    c.model.attention_pattern = overrides["attention_pattern"]
    for kind, opts in overrides["attention"].items():
        c.model.attention[kind].update(opts)
    c.train.update(seq_len=64, global_batch=4, steps=3, lr=3e-3, warmup_frac=0.34, seed=0,
                   log_every=1, checkpoint_every=100, progress=False)
    c.eval.update(points=1, batches=1)
    c.data.update(source="text_dir", path=str(corpus), pattern="*.py", max_docs=200,
                  cache_dir=os.path.join(str(corpus), os.pardir, "token_cache"))
    c.mesh.update(data=1, fsdp=1, tensor=1)
    return c


@pytest.mark.parametrize("arm", list(ARMS))
def test_three_steps_match_golden(arm, tmp_path):
    from moba_jax.train.loop import train

    write_corpus(tmp_path / "corpus")
    train(golden_config(arm, tmp_path / "corpus"), str(tmp_path / arm), progress=False)
    rows = read_jsonl(os.path.join(tmp_path, arm, "metrics.jsonl"))
    got = [(r["train_loss"], r["grad_norm"]) for r in rows]
    assert [r["step"] for r in rows] == [1, 2, 3]
    if os.environ.get("MOBA_JAX_PRINT_GOLDEN"):
        print(f"\n    {arm!r}: {json.dumps(got)},")
    assert arm in GOLDEN, f"no golden values for {arm}: record them (see the module docstring)"
    np.testing.assert_allclose(np.array(got), np.array(GOLDEN[arm]), rtol=1e-6, atol=0,
                               err_msg=f"{arm}: (train_loss, grad_norm) per step drifted from the "
                               "golden values; see tests/test_golden.py's docstring before updating")
