"""Benchmark dense causal attention against MoBA and KDA, then training throughput.

    python -m experiments.benchmark --config=configs/bench_attention.py --workdir=/tmp/bench
    python -m experiments.benchmark --config=configs/bench_attention.py:gpu --workdir=/tmp/bg
    python -m experiments.benchmark --config=configs/bench_attention.py:smoke --workdir=/tmp/bs

Writes ``bench.json`` and ``bench.png`` into ``--workdir`` and prints a table. The
attention part lives in ``kernels/bench.py`` (importable from a notebook). The training
section (``config.training``; skipped when ``training.arms`` is empty) times the
trainer's jitted step for one model size per attention arm
(``moba_jax/train/throughput.py``: tokens/s and MFU against the device's peak, the
dense bf16 peak on a GPU) and adds the rows to ``bench.json`` under ``"training"``.
"""
from __future__ import annotations

import json
import os

from absl import app, flags
from ml_collections import config_flags

from experiments import common
from kernels import bench

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Benchmark config, e.g. configs/bench_attention.py[:gpu|:smoke].",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for bench.json and bench.png.")
flags.mark_flags_as_required(["config", "workdir"])


def training_configs(tcfg) -> list[tuple[str, object]]:
    """``(arm, run config)`` for every arm of the training section: ``configs/lm.py``'s
    base config with ``tcfg.model`` and the arm's attention pattern
    (``configs.bench_attention.TRAINING_ARMS``) and implementations."""
    from configs import bench_attention
    from configs.lm import base_config

    arms = [a.strip() for a in str(tcfg.arms).split(",") if a.strip()]
    unknown = [a for a in arms if a not in bench_attention.TRAINING_ARMS]
    if unknown:
        raise ValueError(f"training.arms: unknown {', '.join(unknown)}; choose from "
                         f"{', '.join(bench_attention.TRAINING_ARMS)}")
    out = []
    for arm in arms:
        c = base_config()
        c.model.update(tcfg.model.to_dict())
        c.model.update(bench_attention.TRAINING_ARMS[arm])
        impl = tcfg.implementations
        c.model.attention.full.implementation = impl.full
        c.model.attention.moba.implementation = impl.moba
        c.model.attention.moba.block_size = int(tcfg.moba.block_size)
        c.model.attention.moba.top_k = int(tcfg.moba.top_k)
        c.model.attention.kda.implementation = impl.kda
        c.model.attention.mla.implementation = impl.mla
        c.train.seq_len = int(tcfg.seq_len)
        c.train.global_batch = int(tcfg.global_batch)
        c.train.progress = False
        out.append((arm, c))
    return out


def training_section(tcfg, log=print) -> list[dict]:
    """Times every arm; a failing arm is reported and recorded, the rest carry on."""
    from moba_jax.train import throughput

    rows, table_rows = [], []
    for i, (arm, c) in enumerate(training_configs(tcfg), 1):
        log(f"[training {i}/{len(tcfg.arms.split(','))}] {arm}: seq {tcfg.seq_len}, batch "
            f"{tcfg.global_batch}, d_model {c.model.d_model} x {c.model.n_layers} layers ...")
        try:
            r = throughput.measure(c, steps=int(tcfg.steps), warmup=int(tcfg.warmup))
            rows.append(dict(arm=arm, **r.row()))
            table_rows.append((arm, r))
        except Exception as e:  # report, don't die
            rows.append(dict(arm=arm, error=bench._short_error(e)))
            log(f"[training] {arm} FAILED {bench._short_error(e)}")
    if table_rows:
        log(throughput.format_table(table_rows))
        log(f"peak: {table_rows[0][1].peak_source}")
    return rows


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    common.setup_logging()
    cfg = _CONFIG.value
    summary = bench.run(cfg, _WORKDIR.value)
    if cfg.get("training") and str(cfg.training.arms).strip():
        summary["training"] = training_section(cfg.training)
        with open(os.path.join(_WORKDIR.value, "bench.json"), "w") as f:
            json.dump(summary, f, indent=1, default=str)


if __name__ == "__main__":
    common.run(main)
